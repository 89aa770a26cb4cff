import { describe, expect, it } from 'vitest'
import {
  axisLabel,
  compact,
  countdown,
  dateTime,
  duration,
  integer,
  money,
  msToWallTime,
  percent,
  relativeTime,
  remainingTone,
  shortTime,
  usd,
  usedTone,
  wallTimeToMs,
  zoneOffsetLabel,
} from '../src/lib/format'
import { etcZoneForOffset } from '../src/lib/session'

describe('compact numbers', () => {
  it.each([
    [0, '0'],
    [7, '7'],
    [999, '999'],
    [1000, '1K'],
    [1234, '1.2K'],
    [12_345, '12.3K'],
    [123_456, '123K'],
    [999_499, '999K'],
    [999_960, '1M'],
    [3_400_000, '3.4M'],
    [14_212_535, '14.2M'],
    [2_500_000_000, '2.5B'],
    [1.2e12, '1.2T'],
    [-1500, '-1.5K'],
    [2.5, '2.5'],
  ])('%d -> %s', (n, text) => {
    expect(compact(n)).toBe(text)
  })

  it('shows a dash for missing values', () => {
    expect(compact(null)).toBe('—')
    expect(compact(undefined)).toBe('—')
    expect(compact(Number.NaN)).toBe('—')
  })
})

describe('money from micro-USD', () => {
  it.each([
    [0, '$0.00'],
    [12_340_000, '$12.34'],
    [24_413_757, '$24.41'],
    [1_234_500_000, '$1,234.50'],
    [4_200, '$0.0042'],
    [10_000, '$0.01'],
    [50, '<$0.0001'],
    [-2_500_000, '-$2.50'],
  ])('%d -> %s', (micros, text) => {
    expect(money(micros)).toBe(text)
  })

  it('compacts large amounts only when asked', () => {
    expect(money(1_234_567_000_000)).toBe('$1,234,567.00')
    expect(money(1_234_567_000_000, { compact: true })).toBe('$1.2M')
    expect(money(99_000_000_000, { compact: true })).toBe('$99,000.00')
  })

  it('formats dollar amounts the same way', () => {
    expect(usd(12.34)).toBe('$12.34')
    expect(usd(null)).toBe('—')
  })
})

describe('percent, integer, duration, countdown', () => {
  it('percent', () => {
    expect(percent(0.995)).toBe('99.5%')
    expect(percent(1)).toBe('100%')
    expect(percent(0)).toBe('0%')
    expect(percent(0.0004)).toBe('<0.1%')
    expect(percent(0.5, 0)).toBe('50%')
    expect(percent(null)).toBe('—')
  })

  it('integer grouping follows the language', () => {
    expect(integer(1_234_567, 'en')).toBe('1,234,567')
    expect(integer(1_234_567, 'vi')).toBe('1.234.567')
    expect(integer(1_234_567, 'zh')).toBe('1,234,567')
  })

  it.each([
    [850, '850 ms'],
    [1_250, '1.25 s'],
    [12_340, '12.3 s'],
    [125_000, '2m 05s'],
    [3_720_000, '1h 02m'],
    [273_600_000, '3d 4h'],
    [300_000, '5m'],
    [7_200_000, '2h'],
    [172_800_000, '2d'],
  ])('duration %d -> %s', (ms, text) => {
    expect(duration(ms)).toBe(text)
  })

  it('countdown', () => {
    expect(countdown(299)).toBe('4:59')
    expect(countdown(299.2)).toBe('5:00')
    expect(countdown(3723)).toBe('1:02:03')
    expect(countdown(0)).toBe('0:00')
    expect(countdown(-5)).toBe('0:00')
  })
})

describe('times in a configured zone', () => {
  const ts = Date.UTC(2025, 0, 31, 23, 5, 9) // 2025-01-31 23:05:09 UTC

  it('absolute time is shown in the zone, not the browser zone', () => {
    expect(dateTime(ts, 'UTC')).toBe('2025-01-31 23:05:09')
    expect(dateTime(ts, 'Asia/Ho_Chi_Minh')).toBe('2025-02-01 06:05:09')
    expect(dateTime(ts, 'America/New_York', { seconds: false })).toBe('2025-01-31 18:05')
  })

  it('short time shows only the clock for today in that zone', () => {
    const now = Date.UTC(2025, 1, 1, 2, 0, 0)
    expect(shortTime(ts, now, 'Asia/Ho_Chi_Minh')).toBe('06:05:09')
    expect(shortTime(ts, now, 'UTC')).toBe('01-31 23:05')
    expect(shortTime(Date.UTC(2023, 5, 1), now, 'UTC')).toBe('2023-06-01')
  })

  it('axis labels', () => {
    expect(axisLabel(ts, 'hour', 'UTC')).toBe('23:05')
    expect(axisLabel(ts, 'day', 'Asia/Tokyo')).toBe('02-01')
    expect(axisLabel(ts, 'hour', 'UTC', true)).toBe('01-31 23:05')
  })

  it('offset labels', () => {
    expect(zoneOffsetLabel('UTC', ts)).toBe('UTC')
    expect(zoneOffsetLabel('Asia/Ho_Chi_Minh', ts)).toBe('UTC+7')
    expect(zoneOffsetLabel('Asia/Kolkata', ts)).toBe('UTC+5:30')
    expect(zoneOffsetLabel('America/New_York', ts)).toBe('UTC-5')
  })

  it('wall time <-> epoch round trip, across a DST change', () => {
    const ms = wallTimeToMs('2025-03-30T03:30', 'Europe/Berlin')
    expect(ms).toBe(Date.UTC(2025, 2, 30, 1, 30))
    expect(msToWallTime(ms!, 'Europe/Berlin')).toBe('2025-03-30T03:30')
    expect(wallTimeToMs('2025-01-31', 'Asia/Ho_Chi_Minh')).toBe(Date.UTC(2025, 0, 30, 17, 0))
    expect(wallTimeToMs('not a date', 'UTC')).toBeNull()
  })

  it('relative time in each language', () => {
    const now = Date.UTC(2025, 0, 1, 12, 0, 0)
    expect(relativeTime(now - 3 * 60_000, now, 'en')).toBe('3 min. ago')
    expect(relativeTime(now + 2 * 3_600_000, now, 'en')).toBe('in 2 hr.')
    expect(relativeTime(now - 10_000, now, 'en')).toBe('now')
    expect(relativeTime(now - 3 * 60_000, now, 'zh')).toBe('3分钟前')
    expect(relativeTime(now - 3 * 60_000, now, 'vi')).toBe('3 phút trước')
  })

  it('server offsets map to Etc zones', () => {
    expect(etcZoneForOffset('2025-01-01T00:00:00+07:00')).toBe('Etc/GMT-7')
    expect(etcZoneForOffset('2025-01-01T00:00:00-05:00')).toBe('Etc/GMT+5')
    expect(etcZoneForOffset('2025-01-01T00:00:00+00:00')).toBe('UTC')
    expect(etcZoneForOffset('2025-01-01T00:00:00+05:30')).toBeUndefined()
  })
})

describe('tones', () => {
  it('remaining: green above 30 %, amber 10-30 %, red below 10 %', () => {
    expect(remainingTone(0.8)).toBe('success')
    expect(remainingTone(0.3)).toBe('warning')
    expect(remainingTone(0.1)).toBe('warning')
    expect(remainingTone(0.05)).toBe('danger')
    expect(remainingTone(null)).toBe('neutral')
  })

  it('used is the inverse', () => {
    expect(usedTone(0.95)).toBe('danger')
    expect(usedTone(0.75)).toBe('warning')
    expect(usedTone(0.2)).toBe('success')
  })
})
