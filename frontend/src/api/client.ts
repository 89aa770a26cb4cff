// Small typed fetch wrapper for the relaymeter JSON API: errors, timeouts, 401 -> login.

export interface ApiFieldError {
  field: string
  message: string
}

/** Every failed call rejects with this; `code` is the API's error code or "network"/"timeout". */
export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly fields: ApiFieldError[]
  readonly retryAfter: number | null
  readonly body: unknown

  constructor(status: number, code: string, message: string, opts: { fields?: ApiFieldError[]; retryAfter?: number | null; body?: unknown } = {}) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.fields = opts.fields ?? []
    this.retryAfter = opts.retryAfter ?? null
    this.body = opts.body
  }

  /** The message for one form field, if the API named it. */
  fieldMessage(field: string): string | undefined {
    return this.fields.find((f) => f.field === field || f.field.endsWith('.' + field))?.message
  }
}

export type Query = Record<string, string | number | boolean | null | undefined | Array<string | number>>

export interface RequestOptions {
  query?: Query
  body?: unknown
  signal?: AbortSignal
  timeoutMs?: number
  /** Don't redirect to the login page on 401 (the login call itself, /me probes). */
  allow401?: boolean
}

type UnauthorizedHandler = () => void
let onUnauthorized: UnauthorizedHandler = () => {}

export function setUnauthorizedHandler(fn: UnauthorizedHandler): void {
  onUnauthorized = fn
}

export function buildUrl(path: string, query?: Query): string {
  const params = new URLSearchParams()
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value === undefined || value === null || value === '') continue
    if (Array.isArray(value)) {
      for (const v of value) params.append(key, String(v))
    } else {
      params.append(key, String(value))
    }
  }
  const qs = params.toString()
  return qs ? `${path}?${qs}` : path
}

/** The {"error": {...}} body as an ApiError (falls back to the status text). */
export function errorFromBody(status: number, body: unknown, retryAfter: number | null = null): ApiError {
  const err = (body as { error?: { code?: unknown; message?: unknown; fields?: unknown } } | null)?.error
  if (err && typeof err === 'object') {
    const fields = Array.isArray(err.fields) ? (err.fields as ApiFieldError[]) : []
    return new ApiError(status, String(err.code ?? 'error'), String(err.message ?? `HTTP ${status}`), {
      fields,
      retryAfter,
      body,
    })
  }
  const detail = (body as { detail?: unknown } | null)?.detail
  return new ApiError(status, status === 401 ? 'unauthorized' : 'error', typeof detail === 'string' ? detail : `HTTP ${status}`, {
    retryAfter,
    body,
  })
}

export async function request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const controller = new AbortController()
  const timeout = setTimeout(() => controller.abort('timeout'), opts.timeoutMs ?? 30_000)
  const onAbort = (): void => controller.abort('aborted')
  opts.signal?.addEventListener('abort', onAbort)
  const headers: Record<string, string> = { Accept: 'application/json' }
  let body: BodyInit | undefined
  if (opts.body instanceof FormData || typeof opts.body === 'string') {
    body = opts.body
  } else if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json'
    body = JSON.stringify(opts.body)
  }
  let res: Response
  try {
    res = await fetch(buildUrl(path, opts.query), {
      method,
      headers,
      body,
      credentials: 'same-origin',
      signal: controller.signal,
    })
  } catch (e) {
    if (opts.signal?.aborted) throw new ApiError(0, 'aborted', 'request cancelled')
    if (controller.signal.aborted) throw new ApiError(0, 'timeout', 'the server did not answer in time')
    throw new ApiError(0, 'network', e instanceof Error ? e.message : 'network error')
  } finally {
    clearTimeout(timeout)
    opts.signal?.removeEventListener('abort', onAbort)
  }
  const text = await res.text()
  let data: unknown = null
  if (text) {
    try {
      data = JSON.parse(text)
    } catch {
      data = text
    }
  }
  if (!res.ok) {
    const retry = Number(res.headers.get('retry-after'))
    const error = errorFromBody(res.status, data, Number.isFinite(retry) && retry > 0 ? retry : null)
    if (res.status === 401 && !opts.allow401) onUnauthorized()
    throw error
  }
  return data as T
}

export const http = {
  get: <T>(path: string, query?: Query, opts: Omit<RequestOptions, 'query'> = {}) => request<T>('GET', path, { ...opts, query }),
  post: <T>(path: string, body?: unknown, opts: RequestOptions = {}) => request<T>('POST', path, { ...opts, body }),
  put: <T>(path: string, body?: unknown, opts: RequestOptions = {}) => request<T>('PUT', path, { ...opts, body }),
  patch: <T>(path: string, body?: unknown, opts: RequestOptions = {}) => request<T>('PATCH', path, { ...opts, body }),
  del: <T>(path: string, opts: RequestOptions = {}) => request<T>('DELETE', path, opts),
}
