// User preferences kept in localStorage: theme, language, auto-refresh interval.
import { reactive, watch } from 'vue'
import type { AppLocale } from './format'

export type ThemePref = 'system' | 'light' | 'dark'
export type RefreshSeconds = 0 | 10 | 30 | 60

export const LOCALES: AppLocale[] = ['en', 'zh', 'vi']
export const REFRESH_CHOICES: RefreshSeconds[] = [0, 10, 30, 60]
const KEYS = { theme: 'rm.theme', locale: 'rm.locale', refresh: 'rm.refresh' } as const

function read(key: string): string | null {
  try {
    return localStorage.getItem(key)
  } catch {
    return null
  }
}

function write(key: string, value: string): void {
  try {
    localStorage.setItem(key, value)
  } catch {
    /* private mode or storage full: the choice just isn't remembered */
  }
}

/** The language to start with: the remembered one, else the browser's if we have it, else English. */
export function initialLocale(stored: string | null, browser: readonly string[]): AppLocale {
  if (stored && (LOCALES as string[]).includes(stored)) return stored as AppLocale
  for (const lang of browser) {
    const base = lang.toLowerCase().split('-')[0]
    if ((LOCALES as string[]).includes(base)) return base as AppLocale
  }
  return 'en'
}

function initialTheme(stored: string | null): ThemePref {
  return stored === 'light' || stored === 'dark' ? stored : 'system'
}

function initialRefresh(stored: string | null): RefreshSeconds {
  const n = Number(stored)
  return (REFRESH_CHOICES as number[]).includes(n) && stored !== null ? (n as RefreshSeconds) : 30
}

const browserLangs = typeof navigator !== 'undefined' ? navigator.languages ?? [navigator.language] : []

export const prefs = reactive({
  theme: initialTheme(read(KEYS.theme)),
  locale: initialLocale(read(KEYS.locale), browserLangs),
  refresh: initialRefresh(read(KEYS.refresh)),
  /** The theme actually shown (system preference resolved). */
  resolvedTheme: 'light' as 'light' | 'dark',
})

const media = typeof window !== 'undefined' && window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null

function applyTheme(): void {
  const dark = prefs.theme === 'dark' || (prefs.theme === 'system' && !!media?.matches)
  prefs.resolvedTheme = dark ? 'dark' : 'light'
  if (typeof document !== 'undefined') document.documentElement.dataset.theme = prefs.resolvedTheme
}

export function startPrefs(): void {
  applyTheme()
  media?.addEventListener('change', applyTheme)
  watch(
    () => prefs.theme,
    (v) => {
      write(KEYS.theme, v)
      applyTheme()
    },
  )
  watch(
    () => prefs.locale,
    (v) => write(KEYS.locale, v),
  )
  watch(
    () => prefs.refresh,
    (v) => write(KEYS.refresh, String(v)),
  )
}

/** Cycle system -> light -> dark -> system. */
export function nextTheme(current: ThemePref): ThemePref {
  return current === 'system' ? 'light' : current === 'light' ? 'dark' : 'system'
}
