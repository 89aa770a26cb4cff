import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError, buildUrl, errorFromBody, request, setUnauthorizedHandler } from '../src/api/client'
import { csvCell, toCsv } from '../src/lib/csv'
import { initialLocale } from '../src/lib/prefs'
import { mainWindows, windowLabel } from '../src/lib/quota'
import type { QuotaWindow } from '../src/api/types'

function reply(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(typeof body === 'string' ? body : JSON.stringify(body), { status, headers })
}

afterEach(() => {
  vi.unstubAllGlobals()
  setUnauthorizedHandler(() => {})
})

describe('API client', () => {
  it('builds query strings, repeating lists and skipping empty values', () => {
    expect(buildUrl('/api/summary', { range: '7d', account: [1, 2], model: [], status: undefined, q: '' })).toBe('/api/summary?range=7d&account=1&account=2')
    expect(buildUrl('/api/overview')).toBe('/api/overview')
  })

  it('turns the error body into an ApiError with code, message and fields', () => {
    const e = errorFromBody(422, { error: { code: 'validation_error', message: 'name: required', fields: [{ field: 'body.name', message: 'required' }] } })
    expect(e).toBeInstanceOf(ApiError)
    expect(e.code).toBe('validation_error')
    expect(e.message).toBe('name: required')
    expect(e.fieldMessage('name')).toBe('required')
  })

  it('sends JSON and returns the parsed body', async () => {
    const fetchMock = vi.fn().mockResolvedValue(reply(200, { ok: 1 }))
    vi.stubGlobal('fetch', fetchMock)
    const out = await request<{ ok: number }>('POST', '/api/keys', { body: { name: 'x' } })
    expect(out).toEqual({ ok: 1 })
    const [url, init] = fetchMock.mock.calls[0]
    expect(url).toBe('/api/keys')
    expect(init.headers['Content-Type']).toBe('application/json')
    expect(init.body).toBe('{"name":"x"}')
    expect(init.credentials).toBe('same-origin')
  })

  it('calls the login redirect on 401, except when the caller expects 401', async () => {
    const onUnauthorized = vi.fn()
    setUnauthorizedHandler(onUnauthorized)
    vi.stubGlobal('fetch', vi.fn().mockImplementation(async () => reply(401, { error: { code: 'unauthorized', message: 'log in' } })))
    await expect(request('GET', '/api/overview')).rejects.toMatchObject({ status: 401, code: 'unauthorized' })
    expect(onUnauthorized).toHaveBeenCalledTimes(1)
    await expect(request('POST', '/api/auth/login', { allow401: true })).rejects.toMatchObject({ status: 401 })
    expect(onUnauthorized).toHaveBeenCalledTimes(1)
  })

  it('reads Retry-After on 429', async () => {
    vi.stubGlobal('fetch', vi.fn().mockResolvedValue(reply(429, { error: { code: 'too_many_attempts', message: 'wait' } }, { 'retry-after': '42' })))
    await expect(request('POST', '/api/auth/login', { allow401: true })).rejects.toMatchObject({ retryAfter: 42, code: 'too_many_attempts' })
  })

  it('reports a network failure as code "network"', async () => {
    vi.stubGlobal('fetch', vi.fn().mockRejectedValue(new TypeError('Failed to fetch')))
    await expect(request('GET', '/api/overview')).rejects.toMatchObject({ status: 0, code: 'network' })
  })

  it('handles non-JSON error bodies', async () => {
    vi.stubGlobal('fetch', vi.fn().mockResolvedValue(reply(502, 'Bad Gateway')))
    await expect(request('GET', '/api/overview')).rejects.toMatchObject({ status: 502, message: 'HTTP 502' })
  })
})

describe('CSV', () => {
  it('quotes separators, quotes and newlines', () => {
    expect(csvCell('a,b')).toBe('"a,b"')
    expect(csvCell('say "hi"')).toBe('"say ""hi"""')
    expect(csvCell('line1\nline2')).toBe('"line1\nline2"')
    expect(csvCell(null)).toBe('')
    expect(csvCell(12.5)).toBe('12.5')
  })

  it('defuses spreadsheet formulas but keeps negative numbers', () => {
    expect(csvCell('=HYPERLINK("x")')).toBe(`"'=HYPERLINK(""x"")"`)
    expect(csvCell('-12.5')).toBe('-12.5')
    expect(csvCell('@cmd')).toBe("'@cmd")
  })

  it('builds rows with CRLF', () => {
    expect(toCsv(['a', 'b'], [[1, 'x']])).toBe('a,b\r\n1,x\r\n')
  })
})

describe('preferences', () => {
  it('starts with the remembered language, else the browser language, else English', () => {
    expect(initialLocale('vi', ['en-US'])).toBe('vi')
    expect(initialLocale(null, ['zh-CN', 'en'])).toBe('zh')
    expect(initialLocale(null, ['fr-FR', 'vi-VN'])).toBe('vi')
    expect(initialLocale('klingon', ['fr'])).toBe('en')
  })
})

describe('quota windows', () => {
  const w = (window: string, window_seconds: number | null): QuotaWindow => ({
    window, window_seconds, used_percent: 10, remaining: null, resets_at_ms: null, limit_reached: false, fetched_ms: 1,
  })

  it('finds the 5 h and 7 d windows whatever the provider calls them', () => {
    const claude = mainWindows([w('seven_day_opus', null), w('seven_day', null), w('five_hour', null)])
    expect(claude.five?.window).toBe('five_hour')
    expect(claude.seven?.window).toBe('seven_day')
    const codex = mainWindows([w('secondary', 604800), w('primary', 18000)])
    expect(codex.five?.window).toBe('primary')
    expect(codex.seven?.window).toBe('secondary')
    expect(mainWindows([w('requests', 60)])).toEqual({ five: null, seven: null })
  })

  it('labels unknown windows readably', () => {
    expect(windowLabel(w('seven_day_opus', null))).toBe('7 d opus')
    expect(windowLabel(w('tokens', 86400))).toBe('1 d · tokens')
  })
})
