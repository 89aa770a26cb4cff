// One sentence for any failure, in the UI language where we know the case.
import { i18n } from '@/i18n'
import { ApiError } from '@/api/client'

export function errorText(e: unknown): string {
  const t = i18n.global.t
  if (e instanceof ApiError) {
    if (e.code === 'network') return t('errors.network')
    if (e.code === 'timeout') return t('errors.timeout')
    if (e.status === 404 && e.code === 'not_found' && /^Not Found$/i.test(e.message)) return t('errors.notAvailable')
    if (e.status >= 500) return t('errors.server', { status: e.status })
    if (e.status === 403) return e.message || t('errors.forbidden')
    return e.message
  }
  return e instanceof Error ? e.message : String(e)
}
