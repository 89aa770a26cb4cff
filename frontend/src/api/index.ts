// Typed calls to every endpoint the console uses.
import { buildUrl, http, type Query } from './client'
import type {
  Account,
  AccountsLoad,
  ApiKey,
  AccountTest,
  CollectorStatus,
  CpaCheck,
  CpaConnection,
  CreatedKey,
  ImportResult,
  KeysUsage,
  MissingPrice,
  Overview,
  PriceItem,
  QuotaHistoryPoint,
  QuotaOut,
  QuotaRefreshReport,
  RepriceJob,
  RequestDetail,
  RequestsPage,
  SettingsOut,
  StorageOut,
  Summary,
  SyncResult,
  Timeseries,
} from './types'
import { applyServerZone, session } from '@/lib/session'

type Sig = { signal?: AbortSignal }

export interface UsageQuery extends Query {
  range?: string
  start?: string
  end?: string
  account?: number[]
  api_key?: number[]
  model?: string[]
  status?: string
}

export const api = {
  overview: (o: Sig = {}) => http.get<Overview>('/api/overview', { top: 5, recent: 10 }, o),
  summary: (q: UsageQuery, o: Sig = {}) => http.get<Summary>('/api/summary', q, o),
  timeseries: (q: UsageQuery & { bucket?: string; metric?: string[]; group_by?: string; top?: number }, o: Sig = {}) =>
    http.get<Timeseries>('/api/timeseries', q, o),
  requests: (q: UsageQuery & { limit?: number; cursor?: string | null }, o: Sig = {}) => http.get<RequestsPage>('/api/requests', q, o),
  request: (id: number, o: Sig = {}) => http.get<RequestDetail>(`/api/requests/${id}`, undefined, o),
  exportUrl: (q: UsageQuery & { format?: string }) => buildUrl('/api/usage/export', q),

  keysUsage: (o: Sig = {}) => http.get<KeysUsage>('/api/keys/usage', undefined, o),
  accountsLoad: (o: Sig = {}) => http.get<AccountsLoad>('/api/accounts/load', undefined, o),

  accounts: (o: Sig = {}) => http.get<{ accounts: Account[] }>('/api/accounts', { origin: 'all' }, o).then((r) => r.accounts),
  createAccount: (body: Record<string, unknown>) => http.post<Account>('/api/accounts', body),
  updateAccount: (id: number, body: Record<string, unknown>) => http.patch<Account>(`/api/accounts/${id}`, body),
  setAccountEnabled: (id: number, enabled: boolean) => http.post<Account>(`/api/accounts/${id}/${enabled ? 'enable' : 'disable'}`),
  deleteAccount: (id: number) => http.del<unknown>(`/api/accounts/${id}`),
  testAccount: (id: number) => http.post<AccountTest>(`/api/accounts/${id}/test`, undefined, { timeoutMs: 90_000 }),
  importAccounts: (content: string, dryRun: boolean) =>
    http.post<ImportResult>('/api/accounts/import', { content, dry_run: dryRun }, { query: { dry_run: dryRun }, timeoutMs: 120_000 }),
  batchAccounts: (body: { ids?: number[]; all?: boolean; set: Record<string, unknown> }) =>
    http.post<{ updated: number }>('/api/accounts/batch', body),

  keys: (o: Sig = {}) => http.get<{ keys: ApiKey[] }>('/api/keys', { origin: 'all' }, o).then((r) => r.keys),
  createKey: (body: Record<string, unknown>) => http.post<CreatedKey>('/api/keys', body),
  updateKey: (id: number, body: Record<string, unknown>) => http.patch<ApiKey>(`/api/keys/${id}`, body),
  setKeyEnabled: (id: number, enabled: boolean) => http.post<ApiKey>(`/api/keys/${id}/${enabled ? 'enable' : 'disable'}`),
  revokeKey: (id: number) => http.post<ApiKey>(`/api/keys/${id}/revoke`),
  deleteKey: (id: number) => http.del<unknown>(`/api/keys/${id}`),

  quota: (o: Sig = {}) => http.get<QuotaOut>('/api/quota', undefined, o),
  refreshQuota: (accountIds?: number[]) => http.post<QuotaRefreshReport>('/api/quota/refresh', accountIds ? { accounts: accountIds } : {}, { timeoutMs: 120_000 }),
  quotaHistory: (q: { account: number; since?: number; window?: string }, o: Sig = {}) =>
    http.get<{ items: QuotaHistoryPoint[] } | QuotaHistoryPoint[]>('/api/quota/history', q, o).then(listOf),

  collectorStatus: (o: Sig = {}) => http.get<CollectorStatus>('/api/collector/status', undefined, o),
  cpaConnections: (o: Sig = {}) => http.get<{ connections: CpaConnection[] }>('/api/collector/connections', undefined, o).then((r) => r.connections),
  createCpa: (body: Record<string, unknown>) => http.post<CpaConnection>('/api/collector/connections', body, { timeoutMs: 60_000 }),
  updateCpa: (id: number, body: Record<string, unknown>) => http.patch<CpaConnection>(`/api/collector/connections/${id}`, body, { timeoutMs: 60_000 }),
  deleteCpa: (id: number) => http.del<unknown>(`/api/collector/connections/${id}`),
  testCpa: (id: number) => http.post<CpaCheck>(`/api/collector/connections/${id}/test`, undefined, { timeoutMs: 60_000 }),
  restartCpa: (id: number) => http.post<unknown>(`/api/collector/connections/${id}/restart`),

  prices: (q: { q?: string; limit?: number } = {}, o: Sig = {}) => http.get<{ total: number; items: PriceItem[] }>('/api/prices', q, o),
  missingPrices: (o: Sig = {}) => http.get<{ total: number; items: MissingPrice[] }>('/api/prices/missing', undefined, o),
  setPrice: (model: string, body: Record<string, unknown>) => http.put<{ price: PriceItem }>(`/api/prices/${encodeURIComponent(model)}`, body),
  deletePrice: (model: string) => http.del<unknown>(`/api/prices/${encodeURIComponent(model)}`),
  syncPrices: (body: { url?: string } = {}) => http.post<SyncResult>('/api/prices/sync', body, { timeoutMs: 120_000 }),
  reprice: (body: { since?: string } = {}) => http.post<RepriceJob>('/api/prices/reprice', body),
  repriceStatus: (o: Sig = {}) => http.get<RepriceJob>('/api/prices/reprice', undefined, o),

  settings: (o: Sig = {}) => http.get<SettingsOut>('/api/settings', undefined, o),
  updateSettings: (body: Record<string, unknown>) => http.patch<SettingsOut>('/api/settings', body),
  resetSetting: (key: string) => http.del<SettingsOut>(`/api/settings/${encodeURIComponent(key)}`),
  storage: (o: Sig = {}) => http.get<StorageOut>('/api/system/storage', undefined, o),
  changePassword: (current_password: string, new_password: string) =>
    http.post<{ authenticated: boolean }>('/api/auth/password', { current_password, new_password }),
  health: () => http.get<{ version: string; status: string }>('/api/health', undefined, { allow401: true }),
}

let overviewPrefetch: { at: number; promise: Promise<Overview> } | null = null

/**
 * Start loading the overview before the router and the page's code are ready (the console
 * opens on it), so the numbers arrive one round trip earlier. The page takes it once.
 */
export function prefetchOverview(): void {
  const promise = http.get<Overview>('/api/overview', { top: 5, recent: 10 }, { allow401: true })
  promise.catch(() => {}) // the page retries with a normal call (and its error handling)
  overviewPrefetch = { at: Date.now(), promise }
}

export function takeOverviewPrefetch(): Promise<Overview> | null {
  const p = overviewPrefetch
  overviewPrefetch = null
  return p && Date.now() - p.at < 10_000 ? p.promise : null
}

/** Accept both {"items": [...]} and a bare list. */
export function listOf<T>(body: { items: T[] } | T[]): T[] {
  return Array.isArray(body) ? body : (body?.items ?? [])
}

/** Version and the configured time zone, read once per session. */
export async function loadServerInfo(): Promise<void> {
  const [health, settings] = await Promise.allSettled([api.health(), api.settings()])
  if (health.status === 'fulfilled') session.version = health.value.version
  if (settings.status === 'fulfilled') {
    const values = settings.value.values ?? {}
    applyServerZone(pick(values.timezone), pick(values.timezone_resolved))
  }
}

function pick(v: unknown): string | null {
  if (typeof v === 'string') return v
  if (v && typeof v === 'object' && typeof (v as { value?: unknown }).value === 'string') return (v as { value: string }).value
  return null
}
