// Number, money, duration and time formatting used by every view (pure functions, unit-tested).

export type AppLocale = 'en' | 'zh' | 'vi'

export const INTL_LOCALE: Record<AppLocale, string> = { en: 'en-US', zh: 'zh-CN', vi: 'vi-VN' }

const DASH = '—'

function isNum(n: number | null | undefined): n is number {
  return typeof n === 'number' && Number.isFinite(n)
}

const SUFFIXES: Array<[number, string]> = [
  [1e12, 'T'],
  [1e9, 'B'],
  [1e6, 'M'],
  [1e3, 'K'],
]

/** 999 -> "999", 1234 -> "1.2K", 12_345 -> "12.3K", 123_456 -> "123K", 3_400_000 -> "3.4M". */
export function compact(n: number | null | undefined): string {
  if (!isNum(n)) return DASH
  const sign = n < 0 ? '-' : ''
  const abs = Math.abs(n)
  if (abs < 1000) {
    return sign + (Number.isInteger(abs) ? String(abs) : trimZeros(abs.toFixed(abs < 10 ? 2 : 1)))
  }
  const i = SUFFIXES.findIndex(([base]) => abs >= base)
  const [base, suffix] = SUFFIXES[i]
  const scaled = abs / base
  const text = scaled < 100 ? trimZeros(scaled.toFixed(1)) : String(Math.round(scaled))
  if (Number(text) >= 1000 && i > 0) {
    // 999_960 would read "1000K": promote to the next unit.
    const [nextBase, nextSuffix] = SUFFIXES[i - 1]
    return sign + trimZeros((abs / nextBase).toFixed(1)) + nextSuffix
  }
  return sign + text + suffix
}

function trimZeros(text: string): string {
  return text.includes('.') ? text.replace(/\.?0+$/, '') : text
}

/** Full integer with the locale's grouping: 1234567 -> "1,234,567" (en) / "1.234.567" (vi). */
export function integer(n: number | null | undefined, locale: AppLocale = 'en'): string {
  if (!isNum(n)) return DASH
  return new Intl.NumberFormat(INTL_LOCALE[locale], { maximumFractionDigits: 0 }).format(n)
}

/** Money from micro-USD: "$12.34", "$1,234.50", "$0.0042" for sub-cent amounts, "$0.00" for zero. */
export function money(micros: number | null | undefined, opts: { compact?: boolean } = {}): string {
  if (!isNum(micros)) return DASH
  const usd = micros / 1_000_000
  const sign = usd < 0 ? '-' : ''
  const abs = Math.abs(usd)
  if (abs === 0) return '$0.00'
  if (opts.compact && abs >= 100_000) return `${sign}$${compact(abs)}`
  if (abs < 0.0001) return `${sign}<$0.0001`
  if (abs < 0.01) return `${sign}$${abs.toFixed(4)}`
  const fixed = abs.toFixed(2)
  const [whole, frac] = fixed.split('.')
  return `${sign}$${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')}.${frac}`
}

/** Money from a dollar amount (API fields ending in _usd). */
export function usd(value: number | null | undefined, opts: { compact?: boolean } = {}): string {
  return isNum(value) ? money(Math.round(value * 1_000_000), opts) : DASH
}

/** A ratio 0..1 as a percentage: 0.995 -> "99.5%", 1 -> "100%". */
export function percent(ratio: number | null | undefined, digits = 1): string {
  if (!isNum(ratio)) return DASH
  const value = ratio * 100
  if (value !== 0 && Math.abs(value) < 0.1 && digits <= 1) return value > 0 ? '<0.1%' : '>-0.1%'
  return `${trimZeros(value.toFixed(digits))}%`
}

/** Milliseconds as a short duration: "850 ms", "1.25 s", "12.3 s", "2m 05s", "5m", "1h 02m", "3d 4h". */
export function duration(ms: number | null | undefined): string {
  if (!isNum(ms)) return DASH
  if (ms < 0) return DASH
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 10) return `${s.toFixed(2)} s`
  if (s < 60) return `${s.toFixed(1)} s`
  const total = Math.round(s)
  const d = Math.floor(total / 86400)
  const h = Math.floor((total % 86400) / 3600)
  const m = Math.floor((total % 3600) / 60)
  const sec = total % 60
  if (d > 0) return h ? `${d}d ${h}h` : `${d}d`
  if (h > 0) return m ? `${h}h ${String(m).padStart(2, '0')}m` : `${h}h`
  return sec ? `${m}m ${String(sec).padStart(2, '0')}s` : `${m}m`
}

/** Seconds as a clock countdown: 299 -> "4:59", 3723 -> "1:02:03". */
export function countdown(seconds: number | null | undefined): string {
  if (!isNum(seconds) || seconds <= 0) return '0:00'
  const total = Math.ceil(seconds)
  const h = Math.floor(total / 3600)
  const m = Math.floor((total % 3600) / 60)
  const s = total % 60
  const mm = h > 0 ? String(m).padStart(2, '0') : String(m)
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(s).padStart(2, '0')}`
}

// ---------- time zones and times ----------

/** undefined (the browser's zone) for "local"/empty, else the IANA name if this browser knows it. */
export function resolveZone(tz: string | null | undefined): string | undefined {
  if (!tz || tz === 'local') return undefined
  return isValidTimeZone(tz) ? tz : undefined
}

export function isValidTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz })
    return true
  } catch {
    return false
  }
}

const partsCache = new Map<string, Intl.DateTimeFormat>()

function partsFormatter(tz: string | undefined): Intl.DateTimeFormat {
  const key = tz ?? ''
  let f = partsCache.get(key)
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
    })
    partsCache.set(key, f)
  }
  return f
}

export interface ZonedParts {
  year: number
  month: number
  day: number
  hour: number
  minute: number
  second: number
}

/** Calendar fields of an instant in a time zone. */
export function zonedParts(ms: number, tz?: string): ZonedParts {
  const out: Record<string, number> = {}
  for (const p of partsFormatter(resolveZone(tz)).formatToParts(new Date(ms))) {
    if (p.type !== 'literal') out[p.type] = Number(p.value)
  }
  return {
    year: out.year,
    month: out.month,
    day: out.day,
    hour: out.hour === 24 ? 0 : out.hour,
    minute: out.minute,
    second: out.second,
  }
}

const p2 = (n: number): string => String(n).padStart(2, '0')

/** Absolute time "2025-01-31 14:05:09" in the zone (seconds optional). */
export function dateTime(ms: number | null | undefined, tz?: string, opts: { seconds?: boolean } = {}): string {
  if (!isNum(ms)) return DASH
  const p = zonedParts(ms, tz)
  const base = `${p.year}-${p2(p.month)}-${p2(p.day)} ${p2(p.hour)}:${p2(p.minute)}`
  return opts.seconds === false ? base : `${base}:${p2(p.second)}`
}

/** "2025-01-31" in the zone. */
export function dateOnly(ms: number | null | undefined, tz?: string): string {
  if (!isNum(ms)) return DASH
  const p = zonedParts(ms, tz)
  return `${p.year}-${p2(p.month)}-${p2(p.day)}`
}

/** Short label for chart axes: "14:00" for hourly buckets, "01-31" for days, both for finer ranges. */
export function axisLabel(ms: number, bucket: 'minute' | 'hour' | 'day', tz?: string, spansDays = false): string {
  const p = zonedParts(ms, tz)
  if (bucket === 'day') return `${p2(p.month)}-${p2(p.day)}`
  const time = `${p2(p.hour)}:${p2(p.minute)}`
  return spansDays ? `${p2(p.month)}-${p2(p.day)} ${time}` : time
}

/** Compact time for dense tables: "14:05:09" today, "01-31 14:05" this year, else the date. */
export function shortTime(ms: number | null | undefined, nowMs: number, tz?: string): string {
  if (!isNum(ms)) return DASH
  const p = zonedParts(ms, tz)
  const n = zonedParts(nowMs, tz)
  if (p.year === n.year && p.month === n.month && p.day === n.day) {
    return `${p2(p.hour)}:${p2(p.minute)}:${p2(p.second)}`
  }
  if (p.year === n.year) return `${p2(p.month)}-${p2(p.day)} ${p2(p.hour)}:${p2(p.minute)}`
  return `${p.year}-${p2(p.month)}-${p2(p.day)}`
}

const relCache = new Map<string, Intl.RelativeTimeFormat>()

/** "3 min ago", "in 2 hr", "yesterday" in the UI language. */
export function relativeTime(ms: number | null | undefined, nowMs: number, locale: AppLocale = 'en'): string {
  if (!isNum(ms)) return DASH
  let f = relCache.get(locale)
  if (!f) {
    f = new Intl.RelativeTimeFormat(INTL_LOCALE[locale], { numeric: 'auto', style: 'short' })
    relCache.set(locale, f)
  }
  const diff = (ms - nowMs) / 1000
  const abs = Math.abs(diff)
  if (abs < 45) return f.format(0, 'second')
  if (abs < 45 * 60) return f.format(Math.round(diff / 60), 'minute')
  if (abs < 22 * 3600) return f.format(Math.round(diff / 3600), 'hour')
  if (abs < 26 * 86400) return f.format(Math.round(diff / 86400), 'day')
  if (abs < 320 * 86400) return f.format(Math.round(diff / (30 * 86400)), 'month')
  return f.format(Math.round(diff / (365 * 86400)), 'year')
}

/** Offset label of a zone at an instant, e.g. "UTC+7" / "UTC-03:30". */
export function zoneOffsetLabel(tz: string | undefined, atMs: number): string {
  const p = zonedParts(atMs, tz)
  const asUtc = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second)
  const minutes = Math.round((asUtc - Math.floor(atMs / 1000) * 1000) / 60000)
  if (minutes === 0) return 'UTC'
  const sign = minutes > 0 ? '+' : '-'
  const h = Math.floor(Math.abs(minutes) / 60)
  const m = Math.abs(minutes) % 60
  return `UTC${sign}${h}${m ? ':' + p2(m) : ''}`
}

/** Epoch ms of a wall-clock time ("2025-01-31T14:05") in a zone (for custom range inputs). */
export function wallTimeToMs(value: string, tz?: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?$/.exec(value.trim())
  if (!m) return null
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => (x ? Number(x) : 0))
  const guess = Date.UTC(y, mo - 1, d, h, mi, s)
  // Two passes settle the zone offset, including across DST changes.
  let ms = guess
  for (let i = 0; i < 2; i++) {
    const p = zonedParts(ms, tz)
    const shown = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second)
    ms += guess - shown
  }
  return ms
}

/** "2025-01-31T14:05" for <input type="datetime-local"> in a zone. */
export function msToWallTime(ms: number, tz?: string): string {
  const p = zonedParts(ms, tz)
  return `${p.year}-${p2(p.month)}-${p2(p.day)}T${p2(p.hour)}:${p2(p.minute)}`
}

/** Remaining-capacity tone: green above 30 %, amber 10-30 %, red below 10 %. */
export function remainingTone(remainingRatio: number | null | undefined): 'success' | 'warning' | 'danger' | 'neutral' {
  if (!isNum(remainingRatio)) return 'neutral'
  if (remainingRatio < 0.1) return 'danger'
  if (remainingRatio <= 0.3) return 'warning'
  return 'success'
}

/** Load tone for "used" bars (daily caps, spend vs limit): inverse of remainingTone. */
export function usedTone(usedRatio: number | null | undefined): 'success' | 'warning' | 'danger' | 'neutral' {
  return isNum(usedRatio) ? remainingTone(1 - usedRatio) : 'neutral'
}

/** Bytes for file sizes in the import dialog. */
export function bytes(n: number | null | undefined): string {
  if (!isNum(n)) return DASH
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${trimZeros((n / 1024).toFixed(1))} KB`
  return `${trimZeros((n / 1024 / 1024).toFixed(1))} MB`
}
