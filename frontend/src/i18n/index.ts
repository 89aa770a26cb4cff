// vue-i18n setup: English is bundled, Chinese and Vietnamese load on first use.
import { createI18n } from 'vue-i18n'
import en, { type MessageSchema } from './en'
import type { AppLocale } from '@/lib/format'

export const LANGUAGE_NAMES: Record<AppLocale, string> = { en: 'English', zh: '中文', vi: 'Tiếng Việt' }
const HTML_LANG: Record<AppLocale, string> = { en: 'en', zh: 'zh-CN', vi: 'vi' }

export const i18n = createI18n<[MessageSchema], AppLocale, false>({
  legacy: false,
  locale: 'en',
  fallbackLocale: 'en',
  messages: { en } as Record<AppLocale, MessageSchema>,
  missingWarn: import.meta.env.DEV,
  fallbackWarn: import.meta.env.DEV,
})

const loaders: Record<Exclude<AppLocale, 'en'>, () => Promise<{ default: MessageSchema }>> = {
  zh: () => import('./zh'),
  vi: () => import('./vi'),
}

/** Load the language's messages if needed, then switch to it. */
export async function setLocale(locale: AppLocale): Promise<void> {
  if (locale !== 'en' && !i18n.global.availableLocales.includes(locale)) {
    const mod = await loaders[locale]()
    i18n.global.setLocaleMessage(locale, mod.default)
  }
  i18n.global.locale.value = locale
  document.documentElement.lang = HTML_LANG[locale]
}
