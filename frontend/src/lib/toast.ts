// Global toasts: short confirmations and errors that don't belong to a form.
import { reactive } from 'vue'

export interface Toast {
  id: number
  tone: 'success' | 'danger' | 'info' | 'warning'
  text: string
}

export const toasts = reactive<Toast[]>([])
let nextId = 1

export function toast(text: string, tone: Toast['tone'] = 'success', ms = 3500): void {
  const id = nextId++
  toasts.push({ id, tone, text })
  setTimeout(() => dismiss(id), tone === 'danger' ? ms * 2 : ms)
}

export function dismiss(id: number): void {
  const i = toasts.findIndex((t) => t.id === id)
  if (i >= 0) toasts.splice(i, 1)
}
