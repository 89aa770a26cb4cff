// Chart colours and shared option pieces, read from the CSS design tokens of the current theme.
import type { EChartsCoreOption } from 'echarts/core'

export interface ChartColors {
  palette: string[]
  text: string
  text2: string
  text3: string
  grid: string
  border: string
  surface: string
  success: string
  warning: string
  danger: string
  accent: string
}

export function readChartColors(): ChartColors {
  const s = getComputedStyle(document.documentElement)
  const v = (name: string): string => s.getPropertyValue(name).trim()
  return {
    palette: [1, 2, 3, 4, 5, 6, 7, 8].map((i) => v(`--chart-${i}`)),
    text: v('--text'),
    text2: v('--text-2'),
    text3: v('--text-3'),
    grid: v('--chart-grid'),
    border: v('--border'),
    surface: v('--surface'),
    success: v('--success'),
    warning: v('--warning'),
    danger: v('--danger'),
    accent: v('--accent'),
  }
}

export function baseOption(c: ChartColors): EChartsCoreOption {
  return {
    color: c.palette,
    animationDuration: 300,
    textStyle: { fontFamily: getComputedStyle(document.body).fontFamily, color: c.text2, fontSize: 11 },
    grid: { left: 8, right: 12, top: 28, bottom: 4, containLabel: true },
    tooltip: {
      trigger: 'axis',
      backgroundColor: c.surface,
      borderColor: c.border,
      borderWidth: 1,
      padding: [8, 10],
      textStyle: { color: c.text, fontSize: 12 },
      extraCssText: 'box-shadow: 0 8px 24px rgba(0,0,0,.18); border-radius: 8px;',
      axisPointer: { type: 'shadow', shadowStyle: { color: c.grid, opacity: 0.5 } },
      confine: true,
    },
    legend: { top: 0, left: 0, icon: 'roundRect', itemWidth: 10, itemHeight: 10, textStyle: { color: c.text2, fontSize: 11 } },
  }
}

export function categoryAxis(c: ChartColors, data: string[]): Record<string, unknown> {
  return {
    type: 'category',
    data,
    axisLine: { lineStyle: { color: c.border } },
    axisTick: { show: false },
    axisLabel: { color: c.text3, hideOverlap: true },
  }
}

export function valueAxis(c: ChartColors, formatter: (v: number) => string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'value',
    splitLine: { lineStyle: { color: c.grid } },
    axisLabel: { color: c.text3, formatter },
    ...extra,
  }
}
