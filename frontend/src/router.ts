// Routes (each page is its own lazily loaded chunk) and the login guard.
import { createRouter, createWebHistory, type RouteLocationNormalized } from 'vue-router'
import AppShell from './components/AppShell.vue'
import { setUnauthorizedHandler } from './api/client'
import { checkAuth, session } from './lib/session'

declare module 'vue-router' {
  interface RouteMeta {
    public?: boolean
    /** i18n key of the page title */
    title?: string
  }
}

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/login', name: 'login', component: () => import('./views/LoginView.vue'), meta: { public: true, title: 'login.title' } },
    {
      path: '/',
      component: AppShell,
      children: [
        { path: '', name: 'overview', component: () => import('./views/OverviewView.vue'), meta: { title: 'nav.overview' } },
        { path: 'accounts', name: 'accounts', component: () => import('./views/AccountsView.vue'), meta: { title: 'nav.accounts' } },
        { path: 'keys', name: 'keys', component: () => import('./views/KeysView.vue'), meta: { title: 'nav.keys' } },
        { path: 'usage', name: 'usage', component: () => import('./views/UsageView.vue'), meta: { title: 'nav.usage' } },
        { path: 'quota', name: 'quota', component: () => import('./views/QuotaView.vue'), meta: { title: 'nav.quota' } },
        { path: 'settings/:tab?', name: 'settings', component: () => import('./views/SettingsView.vue'), meta: { title: 'nav.settings' } },
        { path: ':pathMatch(.*)*', name: 'not-found', component: () => import('./views/NotFoundView.vue'), meta: { title: 'notFound.title' } },
      ],
    },
  ],
  scrollBehavior: (_to, _from, saved) => saved ?? { top: 0 },
})

function loginTarget(to: RouteLocationNormalized) {
  return to.fullPath && to.fullPath !== '/' ? { name: 'login', query: { next: to.fullPath } } : { name: 'login' }
}

router.beforeEach(async (to) => {
  if (!session.checked) await checkAuth()
  if (to.meta.public) {
    if (to.name === 'login' && session.authenticated) {
      const next = typeof to.query.next === 'string' && to.query.next.startsWith('/') ? to.query.next : '/'
      return next
    }
    return true
  }
  return session.authenticated ? true : loginTarget(to)
})

setUnauthorizedHandler(() => {
  session.authenticated = false
  const current = router.currentRoute.value
  if (current.name !== 'login') void router.push(loginTarget(current))
})
