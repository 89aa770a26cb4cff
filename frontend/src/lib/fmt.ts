// Formatting bound to the current UI language and the configured time zone (for templates).
import { i18n } from '@/i18n'
import * as f from './format'
import { now } from './now'
import { session } from './session'

const loc = (): f.AppLocale => i18n.global.locale.value as f.AppLocale

export const fmt = {
  compact: f.compact,
  money: f.money,
  usd: f.usd,
  percent: f.percent,
  duration: f.duration,
  countdown: f.countdown,
  bytes: f.bytes,
  int: (n: number | null | undefined): string => f.integer(n, loc()),
  dateTime: (ms: number | null | undefined, seconds = true): string => f.dateTime(ms, session.tz, { seconds }),
  date: (ms: number | null | undefined): string => f.dateOnly(ms, session.tz),
  short: (ms: number | null | undefined): string => f.shortTime(ms, now.value, session.tz),
  rel: (ms: number | null | undefined): string => f.relativeTime(ms, now.value, loc()),
  axis: (ms: number, bucket: 'minute' | 'hour' | 'day', spansDays = false): string => f.axisLabel(ms, bucket, session.tz, spansDays),
  tzLabel: (): string => {
    const name = session.tz ?? Intl.DateTimeFormat().resolvedOptions().timeZone
    const offset = f.zoneOffsetLabel(session.tz, now.value)
    if (name === offset || name === 'UTC' || name === 'Etc/UTC') return offset
    // Etc/GMT-7 reads backwards to most people: show only the offset.
    return name.startsWith('Etc/') ? offset : `${name} (${offset})`
  },
}
