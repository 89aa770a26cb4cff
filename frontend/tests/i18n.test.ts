import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { describe, expect, it } from 'vitest'
import en from '../src/i18n/en'
import vi from '../src/i18n/vi'
import zh from '../src/i18n/zh'

type Tree = { [k: string]: string | Tree }

function flatten(tree: Tree, prefix = ''): Map<string, string> {
  const out = new Map<string, string>()
  for (const [k, v] of Object.entries(tree)) {
    const key = prefix ? `${prefix}.${k}` : k
    if (typeof v === 'string') out.set(key, v)
    else for (const [kk, vv] of flatten(v, key)) out.set(kk, vv)
  }
  return out
}

const placeholders = (s: string): string[] => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort()

const EN = flatten(en as unknown as Tree)
const LANGS: Record<string, Map<string, string>> = { zh: flatten(zh as unknown as Tree), vi: flatten(vi as unknown as Tree) }

describe.each(Object.entries(LANGS))('%s messages', (lang, messages) => {
  it('has exactly the English keys', () => {
    const missing = [...EN.keys()].filter((k) => !messages.has(k))
    const extra = [...messages.keys()].filter((k) => !EN.has(k))
    expect(missing, `${lang} lacks these keys`).toEqual([])
    expect(extra, `${lang} has keys English does not`).toEqual([])
  })

  it('has no empty or untranslated-placeholder strings', () => {
    const empty = [...messages].filter(([, v]) => !v.trim()).map(([k]) => k)
    expect(empty).toEqual([])
  })

  it('keeps the same {placeholders} as English', () => {
    const wrong = [...EN]
      .filter(([k, v]) => messages.has(k) && placeholders(v).join() !== placeholders(messages.get(k)!).join())
      .map(([k]) => k)
    expect(wrong).toEqual([])
  })

  it('is actually translated (not a copy of English)', () => {
    const same = [...EN].filter(([k, v]) => /[a-z]{4,}\s+[a-z]{4,}/i.test(v) && messages.get(k) === v).map(([k]) => k)
    // Product names and identical technical strings may stay; whole sentences may not.
    expect(same.length, `${lang} copies English for: ${same.slice(0, 10).join(', ')}`).toBeLessThanOrEqual(3)
  })
})

// ---------- the source uses only keys that exist, and no hard-coded text ----------

const SRC = join(__dirname, '..', 'src')

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    return statSync(path).isDirectory() ? files(path) : /\.(vue|ts)$/.test(name) && !path.includes(`${join('src', 'i18n')}`) ? [path] : []
  })
}
const SOURCES = files(SRC).map((path) => ({ path: relative(SRC, path), text: readFileSync(path, 'utf8') }))

describe('source code', () => {
  it('every t("...") key exists in English', () => {
    const missing: string[] = []
    for (const { path, text } of SOURCES) {
      for (const m of text.matchAll(/\b(?:t|te)\(\s*'([a-zA-Z0-9_.]+)'/g)) {
        if (!EN.has(m[1])) missing.push(`${path}: ${m[1]}`)
      }
      // keypath="..." of <i18n-t>
      for (const m of text.matchAll(/keypath="([a-zA-Z0-9_.]+)"/g)) {
        if (!EN.has(m[1])) missing.push(`${path}: ${m[1]}`)
      }
      // Dynamic keys: t(`prefix.${x}`) needs the prefix to be a group of messages.
      for (const m of text.matchAll(/\bt\(\s*`([a-zA-Z0-9_.]+)\.\$\{/g)) {
        if (![...EN.keys()].some((k) => k.startsWith(m[1] + '.'))) missing.push(`${path}: ${m[1]}.*`)
      }
    }
    expect(missing).toEqual([])
  })

  it('every label key in route and menu tables exists', () => {
    const missing: string[] = []
    for (const { path, text } of SOURCES) {
      for (const m of text.matchAll(/\b(?:title|label): '([a-z][a-zA-Z]+\.[a-zA-Z0-9_.]+)'/g)) {
        if (!EN.has(m[1])) missing.push(`${path}: ${m[1]}`)
      }
    }
    expect(missing).toEqual([])
  })

  it('templates contain no hard-coded sentences', () => {
    const offenders: string[] = []
    const looksLikeProse = (s: string): boolean => {
      const text = s.replace(/&nbsp;|&[a-z]+;/g, ' ').trim()
      if (!text) return false
      // Two or more words of letters, or a capitalised word: text a user reads.
      return /[A-Za-z]{2,}\s+[A-Za-z]{2,}/.test(text) || /^[A-Z][a-z]{2,}/.test(text)
    }
    for (const { path, text } of SOURCES.filter((f) => f.path.endsWith('.vue'))) {
      const tpl = /<template>([\s\S]*)<\/template>/.exec(text)?.[1] ?? ''
      const stripped = tpl
        .replace(/<!--[\s\S]*?-->/g, '')
        .replace(/<(pre|code)\b[\s\S]*?<\/\1>/g, '')
        .replace(/\{\{[\s\S]*?\}\}/g, '')
      for (const m of stripped.matchAll(/>([^<>]+)</g)) {
        if (looksLikeProse(m[1])) offenders.push(`${path}: text "${m[1].trim()}"`)
      }
      for (const m of stripped.matchAll(/\s(placeholder|title|aria-label|alt|label)="([^"]*)"/g)) {
        if (looksLikeProse(m[2])) offenders.push(`${path}: ${m[1]}="${m[2]}"`)
      }
    }
    expect(offenders).toEqual([])
  })
})
