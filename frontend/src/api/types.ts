// Shapes of the relaymeter JSON API as the console uses them (see /api/openapi.json).

export type RangeName = 'today' | '1h' | '5h' | '24h' | '7d' | '30d' | 'custom'

export interface RangeOut {
  name: string
  tz: string
  start_ms: number
  end_ms: number
  start: string
  end: string
}

export interface Metrics {
  requests: number
  failures: number
  successes: number
  success_rate: number | null
  input_tokens: number
  output_tokens: number
  reasoning_tokens: number
  cache_read_tokens: number
  cache_creation_tokens: number
  total_tokens: number
  cost_micros: number
  cost_usd: number
  avg_latency_ms: number | null
  p50_latency_ms: number | null
  p95_latency_ms: number | null
  avg_ttft_ms: number | null
}

export interface AccountBreakdown extends Metrics {
  account_id: number
  name: string
  provider: string
}

export interface KeyBreakdown extends Metrics {
  api_key_id: number
  name: string
  prefix: string
}

export interface ModelBreakdown extends Metrics {
  model: string
}

export interface Summary {
  range: RangeOut
  totals: Metrics
  by_account: AccountBreakdown[]
  by_api_key: KeyBreakdown[]
  by_model: ModelBreakdown[]
  by_endpoint: Array<Metrics & { endpoint: string }>
}

export interface Bucket {
  start_ms: number
  end_ms: number
  label: string
}

export interface Series {
  key: number | string | null
  name: string
  values: Record<string, Array<number | null>>
  totals: Record<string, number | null>
}

export interface Timeseries {
  range: RangeOut
  bucket: '5m' | 'hour' | 'day'
  group_by: string | null
  metrics: string[]
  buckets: Bucket[]
  series: Series[]
}

export interface RequestItem {
  id: number
  ts_ms: number
  time: string
  source: string
  request_id: string
  account_id: number
  account_name: string | null
  account_label: string
  auth_index: string
  api_key_id: number
  api_key_name: string | null
  api_key_prefix: string | null
  provider: string
  endpoint: string
  method: string
  path: string
  model: string
  actual_model: string
  served_model: string
  stream: boolean | null
  status_code: number | null
  failed: boolean
  error_kind: string | null
  error_message: string | null
  input_tokens: number
  output_tokens: number
  reasoning_tokens: number
  cache_read_tokens: number
  cache_creation_tokens: number
  cache_creation_1h_tokens: number
  total_tokens: number
  latency_ms: number | null
  ttft_ms: number | null
  cost_micros: number
  cost_usd: number
  price_missing: boolean
  service_tier: string | null
  client_ip: string | null
  user_agent: string | null
}

export interface RequestsPage {
  range: RangeOut | null
  limit: number
  items: RequestItem[]
  next_cursor: string | null
}

export interface RequestDetail extends RequestItem {
  event_hash: string
  ingested_ms: number
  raw: unknown
}

export interface PeriodUsage {
  start_ms: number
  resets_ms: number | null
  requests: number
  failures: number
  successes: number
  success_rate: number | null
  input_tokens: number
  output_tokens: number
  total_tokens: number
  cost_micros: number
  cost_usd: number
  limit_micros: number | null
  limit_usd: number | null
  remaining_micros: number | null
  used_ratio: number | null
  over_limit: boolean
}

export interface KeyUsageItem {
  api_key_id: number
  name: string
  prefix: string
  origin: string
  enabled: boolean
  revoked: boolean
  expires_ms: number | null
  last_used_ms: number | null
  rpm: number
  tpm: number
  max_concurrency: number
  concurrency_in_use: number | null
  today: PeriodUsage
  week: PeriodUsage
  month: PeriodUsage
  total: { cost_micros: number | null; limit_micros: number | null; remaining_micros: number | null; used_ratio: number | null }
}

export interface KeysUsage {
  generated_ms: number
  tz: string
  week_start: string
  items: KeyUsageItem[]
}

export interface CapUsage {
  used: number
  cap: number | null
  remaining: number | null
  ratio: number | null
}

export interface AccountLoadItem {
  account_id: number
  name: string
  origin: string
  provider: string
  kind: string
  plan: string | null
  enabled: boolean
  priority: number | null
  weight: number | null
  health: string
  health_reason: string | null
  cooldown_until_ms: number | null
  last_used_ms: number | null
  today: {
    requests: number
    failures: number
    success_rate: number | null
    total_tokens: number
    cost_micros: number
    cost_usd: number
    avg_latency_ms: number | null
  }
  caps: { requests: CapUsage; tokens: CapUsage; cost_micros: CapUsage }
  load_rate: number | null
  overloaded: boolean
  idle: boolean
  share_of_requests: number | null
  concurrency: { current: number | null; max: number | null }
}

export interface AccountsLoad {
  generated_ms: number
  tz: string
  day_start_ms: number
  totals: { accounts: number; enabled: number; healthy: number; overloaded: number; idle: number }
  items: AccountLoadItem[]
}

export interface CompactMetrics {
  requests: number
  failures: number
  success_rate: number | null
  input_tokens: number
  output_tokens: number
  cache_read_tokens: number
  cache_creation_tokens: number
  total_tokens: number
  cost_micros: number
  cost_usd: number
}

export interface Overview {
  generated_ms: number
  tz: string
  today: RangeOut
  kpis: {
    accounts_total: number
    accounts_enabled: number
    accounts_healthy: number
    accounts_overloaded: number
    requests_today: number
    failures_today: number
    success_rate_today: number | null
    tokens_today: number
    input_tokens_today: number
    output_tokens_today: number
    cost_today_micros: number
    cost_today_usd: number
    active_api_keys_today: number
    avg_latency_ms_today: number | null
    p95_latency_ms_today: number | null
  }
  trend_7d: Array<CompactMetrics & { date: string; start_ms: number }>
  hourly_today: Array<CompactMetrics & { hour: string; start_ms: number }>
  tokens_by_model: Array<{ model: string; total_tokens: number; requests: number; cost_micros: number; cost_usd: number; share: number | null }>
  top_keys: Array<CompactMetrics & { api_key_id: number; name: string; prefix: string }>
  accounts: Array<{
    account_id: number
    name: string
    provider: string
    health: string
    enabled: boolean
    load_rate: number | null
    overloaded: boolean
    idle: boolean
    requests_today: number
  }>
  recent_requests: RequestItem[]
}

// ---------- admin CRUD ----------

export interface Account {
  id: number
  origin: string
  name: string
  provider: string
  kind: string
  base_url: string | null
  plan: string | null
  email: string | null
  priority: number
  weight: number
  max_concurrency: number
  enabled: boolean
  disabled_by: string | null
  models: string[] | null
  model_map: Record<string, string>
  daily_request_cap: number | null
  daily_token_cap: number | null
  daily_cost_cap_micros: number | null
  daily_cost_cap_usd: number | null
  proxy_url: string | null
  note: string | null
  health: string | null
  health_reason: string | null
  cooldown_until_ms: number | null
  token_expires_ms: number | null
  credential: { present: boolean; readable?: boolean; api_key?: string; access_token?: string; has_refresh_token?: boolean; account_id?: string } | null
  last_used_ms: number | null
  created_ms: number
  updated_ms: number
  runtime?: Record<string, unknown>
}

export interface AccountTest {
  id: number
  name: string
  ok: boolean
  status?: number | null
  message?: string
  latency_ms?: number
}

export interface ImportRowResult {
  row: string
  name: string | null
  status: 'added' | 'skipped' | 'failed'
  reason?: string | null
  id?: number
}

export interface ImportResult {
  dry_run: boolean
  added: number
  skipped: number
  failed: number
  rows: ImportRowResult[]
}

export interface ApiKey {
  id: number
  origin: string
  name: string
  prefix: string
  remark: string | null
  enabled: boolean
  revoked: boolean
  usable: boolean
  expires_ms: number | null
  models: string[] | null
  max_concurrency: number
  rpm: number
  tpm: number
  daily_limit_micros: number | null
  weekly_limit_micros: number | null
  monthly_limit_micros: number | null
  total_limit_micros: number | null
  daily_limit_usd: number | null
  weekly_limit_usd: number | null
  monthly_limit_usd: number | null
  total_limit_usd: number | null
  last_used_ms: number | null
  created_ms: number
  updated_ms: number
  usage?: Record<string, unknown>
}

export interface CreatedKey {
  key: string
  api_key: ApiKey
  note?: string
}

export interface QuotaWindow {
  window: string
  used_percent: number | null
  remaining_percent?: number | null
  remaining: number | null
  limit?: number | null
  resets_at_ms: number | null
  window_seconds: number | null
  limit_reached: boolean
  origin?: string
  fetched_ms: number | null
}

export interface LocalWindowUse {
  start_ms?: number
  end_ms?: number
  aligned_to_reset?: boolean
  requests: number
  total_tokens: number
  cost_micros: number
}

export interface QuotaAccount {
  account_id: number
  name: string
  origin?: string
  provider: string
  kind?: string
  plan?: string | null
  email?: string | null
  enabled?: boolean
  health?: string
  windows: QuotaWindow[]
  local?: Record<string, LocalWindowUse> | null
  fetched_ms?: number | null
  last_attempt_ms?: number | null
  last_status?: string | null
  last_error?: string | null
  error?: string | null
  next_refresh_allowed_in_s?: number | null
  exhausted_until_ms?: number | null
  cooldown?: { until_ms: number; kind: string | null; reason: string | null } | null
}

export interface QuotaOut {
  generated_ms: number
  refresh?: { running: boolean; interval_s: number; force_cooldown_s: number; last_run_ms: number | null }
  accounts?: QuotaAccount[]
  items?: QuotaAccount[]
  next_refresh_allowed_ms?: number | null
  cooldown_s?: number | null
}

export interface QuotaRefreshReport {
  started_ms: number
  finished_ms: number
  force: boolean
  joined: boolean
  counts: Record<string, number>
  results: Array<{ account_id?: number; name?: string; status: string; retry_after_s?: number; message?: string }>
}

export interface QuotaHistoryPoint {
  window: string
  used_percent: number | null
  fetched_ms: number
  resets_at_ms?: number | null
}

export interface CollectorConnStatus {
  id?: number
  name: string
  base_url: string
  mode: string
  state: string
  transport: string | null
  cpa_version: string | null
  publishing_enabled: boolean | null
  retention_s: number | null
  poll_interval_ms: number
  batch_size: number
  last_poll_ms: number | null
  last_consumed_ms: number | null
  last_inserted_ms: number | null
  consumed_total: number
  inserted_total: number
  duplicates_total: number
  dead_letters_total: number
  errors_total: number
  spool_pending: number
  lag_ms: number | null
  last_error: string | null
  last_error_kind: string | null
  last_error_ms: number | null
  next_retry_ms: number | null
  warnings: string[]
  dead_letters_stored?: number
}

export interface CollectorStatus {
  collector_enabled: boolean
  running: boolean
  connections: CollectorConnStatus[]
}

export interface CpaConnection {
  id: number
  name: string
  base_url: string
  mode: string
  batch_size: number
  poll_interval_ms: number
  enabled: boolean
  created_ms: number
  updated_ms: number
  status: CollectorConnStatus
  check?: CpaCheck | null
}

export interface CpaCheck {
  ok: boolean
  base_url: string
  cpa_version: string | null
  publishing_enabled: boolean | null
  retention_s: number | null
  poll_interval_ok: boolean | null
  transport: string | null
  auth_files: number | null
  error: string | null
  error_kind: string | null
  warnings: string[]
}

export interface PriceItem {
  model: string
  provider: string
  origin: string
  updated_ms: number
  input: number | null
  output: number | null
  cache_read: number | null
  cache_write_5m: number | null
  cache_write_1h: number | null
  tier: { threshold_tokens: number; input: number | null; output: number | null; cache_read: number | null; cache_write: number | null } | null
  service_tiers: Record<string, number>
  shadows?: string[]
}

export interface MissingPrice {
  model: string
  provider: string
  requests: number
  total_tokens: number
  cost_micros: number
  first_hour_ms: number
  last_hour_ms: number
}

export interface SyncResult {
  source: string
  models: number
  added: number
  updated: number
  removed: number
  unchanged: number
  unpriced: number
  skipped_count: number
}

export interface RepriceJob {
  id?: number | string
  state: string
  done?: number
  total?: number
  started_ms?: number | null
  finished_ms?: number | null
  error?: string | null
}

export interface SettingItem {
  key: string
  value: unknown
  config_value: unknown
  source: string
  editable: boolean
  type: 'integer' | 'string' | 'boolean'
  choices: string[] | null
  description: string
  restart_note: string | null
}

export interface SettingsOut {
  items: SettingItem[]
  values: Record<string, unknown>
}

export interface StorageOut {
  backend: string
  rows: Record<string, number>
  oldest_event_ms: number | null
  newest_event_ms: number | null
  total_bytes: number
  retention_days: number
  retention: { running: boolean; runs: number; deleted_total: number; last: { finished_ms: number; deleted: number; error: string | null } | null } | null
}
