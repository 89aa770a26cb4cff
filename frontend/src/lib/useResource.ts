// Loading / error / data state for one API read, keeping the last data while it refreshes.
import { onBeforeUnmount, ref, shallowRef, watch, type Ref, type WatchSource } from 'vue'
import { ApiError } from '@/api/client'

export interface Resource<T> {
  data: Ref<T | null>
  error: Ref<ApiError | null>
  /** True only while nothing has loaded yet (first load or after the inputs changed). */
  loading: Ref<boolean>
  /** True during any fetch, including background refreshes. */
  busy: Ref<boolean>
  updatedAt: Ref<number | null>
  reload: () => Promise<void>
}

export function useResource<T>(
  fetcher: (signal: AbortSignal) => Promise<T>,
  opts: { watch?: WatchSource[]; immediate?: boolean } = {},
): Resource<T> {
  const data = shallowRef<T | null>(null)
  const error = ref<ApiError | null>(null)
  const loading = ref(false)
  const busy = ref(false)
  const updatedAt = ref<number | null>(null)
  let controller: AbortController | null = null
  let seq = 0

  async function reload(): Promise<void> {
    controller?.abort()
    const mine = new AbortController()
    controller = mine
    const n = ++seq
    busy.value = true
    if (data.value === null) loading.value = true
    try {
      const value = await fetcher(mine.signal)
      if (n !== seq) return
      data.value = value
      error.value = null
      updatedAt.value = Date.now()
    } catch (e) {
      if (n !== seq || (e instanceof ApiError && e.code === 'aborted')) return
      error.value = e instanceof ApiError ? e : new ApiError(0, 'client', e instanceof Error ? e.message : String(e))
    } finally {
      if (n === seq) {
        busy.value = false
        loading.value = false
      }
    }
  }

  if (opts.watch?.length) {
    watch(opts.watch, () => {
      data.value = null
      void reload()
    })
  }
  if (opts.immediate !== false) void reload()
  onBeforeUnmount(() => {
    seq++
    controller?.abort()
  })
  return { data: data as Ref<T | null>, error, loading, busy, updatedAt, reload }
}
