// A shared ticking clock for relative times and countdowns (one timer for the whole app).
import { ref } from 'vue'

export const now = ref(Date.now())
let started = false

export function startClock(): void {
  if (started) return
  started = true
  setInterval(() => {
    now.value = Date.now()
  }, 1000)
}
