// Auto-refresh (off / 10 / 30 / 60 s, from prefs) for the current page; paused while the tab is hidden.
import { onBeforeUnmount, onMounted, reactive, watch } from 'vue'
import { prefs } from './prefs'

/** What the top bar shows and triggers: the current page registers its reload here. */
export const pageRefresh = reactive({
  handler: null as null | (() => Promise<unknown> | void),
  busy: false,
  lastAt: null as number | null,
})

export async function refreshNow(): Promise<void> {
  const fn = pageRefresh.handler
  if (!fn || pageRefresh.busy) return
  pageRefresh.busy = true
  try {
    await fn()
    pageRefresh.lastAt = Date.now()
  } finally {
    pageRefresh.busy = false
  }
}

/** Register this page's reload for the refresh button and the auto-refresh timer. */
export function useAutoRefresh(reload: () => Promise<unknown> | void): void {
  let timer: ReturnType<typeof setInterval> | null = null
  let hiddenSince: number | null = null

  const schedule = (): void => {
    if (timer) clearInterval(timer)
    timer = null
    if (prefs.refresh > 0) {
      timer = setInterval(() => {
        if (document.visibilityState === 'visible') void refreshNow()
      }, prefs.refresh * 1000)
    }
  }
  const onVisibility = (): void => {
    if (document.visibilityState === 'hidden') {
      hiddenSince = Date.now()
    } else if (hiddenSince !== null && prefs.refresh > 0 && Date.now() - hiddenSince > prefs.refresh * 1000) {
      hiddenSince = null
      void refreshNow()
    }
  }

  onMounted(() => {
    pageRefresh.handler = reload
    pageRefresh.lastAt = Date.now()
    schedule()
    document.addEventListener('visibilitychange', onVisibility)
  })
  const stop = watch(() => prefs.refresh, schedule)
  onBeforeUnmount(() => {
    stop()
    if (timer) clearInterval(timer)
    document.removeEventListener('visibilitychange', onVisibility)
    if (pageRefresh.handler === reload) pageRefresh.handler = null
  })
}
