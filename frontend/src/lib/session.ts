// Who is logged in, and server facts every view needs (time zone, version).
import { reactive } from 'vue'
import { http } from '@/api/client'
import { resolveZone } from './format'

export const session = reactive({
  checked: false,
  authenticated: false,
  /** IANA zone used for every displayed time; undefined = the browser's zone. */
  tz: undefined as string | undefined,
  /** The zone as configured on the server ("local" or an IANA name). */
  tzSetting: 'local',
  version: '',
})

export async function checkAuth(): Promise<boolean> {
  try {
    const me = await http.get<{ authenticated: boolean }>('/api/auth/me', undefined, { allow401: true })
    session.authenticated = !!me.authenticated
  } catch {
    session.authenticated = false
  }
  session.checked = true
  return session.authenticated
}

export function applyServerZone(setting: string | null | undefined, resolved?: string | null): void {
  session.tzSetting = setting || 'local'
  session.tz = resolveZone(resolved || setting)
}

/**
 * With the zone set to "local" the server's zone has no name we can see; its answers carry
 * ISO times with an offset ("...T00:00:00+07:00"), so show times at that offset, matching
 * the server's "today". Whole-hour offsets map to Etc/GMT zones; others keep the browser's zone.
 */
export function zoneFromServerTime(tzName: string | null | undefined, isoWithOffset: string | null | undefined): void {
  if (tzName && tzName !== 'local') {
    const z = resolveZone(tzName)
    if (z) session.tz = z
    return
  }
  if (session.tzSetting !== 'local' || !isoWithOffset) return
  const z = etcZoneForOffset(isoWithOffset)
  if (z) session.tz = z
}

export function etcZoneForOffset(iso: string): string | undefined {
  if (/Z$/.test(iso)) return 'UTC'
  const m = /([+-])(\d{2}):?(\d{2})$/.exec(iso)
  if (!m) return undefined
  if (m[3] !== '00') return undefined
  const hours = Number(m[2])
  if (hours === 0) return 'UTC'
  // Etc/GMT signs are inverted: UTC+7 is Etc/GMT-7.
  return resolveZone(`Etc/GMT${m[1] === '+' ? '-' : '+'}${hours}`)
}

export async function login(password: string): Promise<void> {
  await http.post('/api/auth/login', { password }, { allow401: true })
  session.authenticated = true
  session.checked = true
}

export async function logout(): Promise<void> {
  try {
    await http.post('/api/auth/logout', undefined, { allow401: true })
  } finally {
    session.authenticated = false
  }
}
