// Picking the 5-hour and 7-day windows out of a provider's quota windows (names differ per provider).
import type { QuotaWindow } from '@/api/types'

const FIVE_H = 5 * 3600
const SEVEN_D = 7 * 86400

export function isFiveHour(w: QuotaWindow): boolean {
  if (w.window_seconds != null) return Math.abs(w.window_seconds - FIVE_H) < 600
  return /five_hour|5h|primary/i.test(w.window)
}

export function isSevenDay(w: QuotaWindow): boolean {
  if (w.window_seconds != null) return Math.abs(w.window_seconds - SEVEN_D) < 3600 && !/opus|sonnet/i.test(w.window)
  return /^(seven_day|7d|secondary)$/i.test(w.window)
}

/** The 5 h and the 7 d window of an account, if the provider reports them. */
export function mainWindows(windows: QuotaWindow[] | undefined): { five: QuotaWindow | null; seven: QuotaWindow | null } {
  const list = windows ?? []
  return { five: list.find(isFiveHour) ?? null, seven: list.find(isSevenDay) ?? null }
}

/** A readable name for a provider window key: "five_hour" -> "5 h", "seven_day_opus" -> "7 d opus". */
export function windowLabel(w: QuotaWindow): string {
  if (isFiveHour(w)) return '5 h'
  if (isSevenDay(w)) return '7 d'
  const name = w.window
    .replace(/^seven_day_?/, '7 d ')
    .replace(/^five_hour_?/, '5 h ')
    .replace(/_/g, ' ')
    .trim()
  if (name !== w.window) return name
  if (w.window_seconds) {
    const s = w.window_seconds
    if (s % 86400 === 0) return `${s / 86400} d · ${w.window}`
    if (s % 3600 === 0) return `${s / 3600} h · ${w.window}`
  }
  return name
}
