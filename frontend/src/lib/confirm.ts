// A promise-based confirmation dialog (rendered once by App.vue).
import { reactive } from 'vue'

export interface ConfirmRequest {
  title: string
  text: string
  confirmLabel: string
  danger: boolean
  resolve: (ok: boolean) => void
}

export const confirmState = reactive<{ current: ConfirmRequest | null }>({ current: null })

export function confirmDialog(opts: { title: string; text: string; confirmLabel: string; danger?: boolean }): Promise<boolean> {
  confirmState.current?.resolve(false)
  return new Promise((resolve) => {
    confirmState.current = { danger: false, ...opts, resolve }
  })
}

export function answerConfirm(ok: boolean): void {
  const cur = confirmState.current
  confirmState.current = null
  cur?.resolve(ok)
}
