// Entry: preferences (theme, language), i18n, router, then mount.
import { createApp, watch } from 'vue'
import App from './App.vue'
import { i18n, setLocale } from './i18n'
import { startClock } from './lib/now'
import { prefs, startPrefs } from './lib/prefs'
import { router } from './router'
import { prefetchOverview } from './api'
import './styles/tokens.css'
import './styles/base.css'

startPrefs()
startClock()
if (location.pathname === '/') prefetchOverview()

async function boot(): Promise<void> {
  await setLocale(prefs.locale).catch(() => setLocale('en'))
  watch(
    () => prefs.locale,
    (locale) => void setLocale(locale),
  )
  createApp(App).use(i18n).use(router).mount('#app')
}

void boot()
