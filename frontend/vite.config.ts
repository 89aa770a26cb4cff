/// <reference types="vitest/config" />
import { brotliCompressSync, constants, gzipSync } from 'node:zlib'
import { readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { defineConfig, type Plugin } from 'vite'
import vue from '@vitejs/plugin-vue'

const outDir = resolve(import.meta.dirname, '../relaymeter/web/dist')

/** Writes .br and .gz next to text assets; relaymeter serves them when the browser accepts them. */
function precompress(): Plugin {
  return {
    name: 'relaymeter-precompress',
    apply: 'build',
    writeBundle(options, bundle) {
      const dir = options.dir ?? outDir
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|svg|json)$/.test(name)) continue
        const data = readFileSync(join(dir, name))
        if (data.length < 1024) continue
        writeFileSync(join(dir, name + '.gz'), gzipSync(data, { level: 9 }))
        writeFileSync(
          join(dir, name + '.br'),
          brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }),
        )
      }
    },
  }
}

export default defineConfig({
  plugins: [vue(), precompress()],
  resolve: { alias: { '@': resolve(import.meta.dirname, 'src') } },
  define: {
    __VUE_OPTIONS_API__: 'false',
    __VUE_PROD_DEVTOOLS__: 'false',
    __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false',
    __VUE_I18N_FULL_INSTALL__: 'true',
    __VUE_I18N_LEGACY_API__: 'false',
    __INTLIFY_PROD_DEVTOOLS__: 'false',
  },
  build: {
    outDir,
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    chunkSizeWarningLimit: 700,
    rolldownOptions: {
      output: {
        advancedChunks: {
          groups: [
            { name: 'vendor', test: /node_modules[\\/](@vue|vue|vue-router|vue-i18n|@intlify)[\\/]/ },
            { name: 'echarts', test: /node_modules[\\/](echarts|zrender|tslib)[\\/]/ },
          ],
        },
      },
    },
  },
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:8320',
      '/v1': 'http://127.0.0.1:8320',
      '/healthz': 'http://127.0.0.1:8320',
    },
  },
  test: {
    environment: 'node',
    include: ['tests/**/*.test.ts'],
  },
})
