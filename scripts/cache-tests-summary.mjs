// Summarises http-cache-tests results the way cache-tests.fyi classifies them.
//
// Usage: node cache-tests-summary.mjs <suite dir> <our results.json> [failures.txt]
//
// Prints our required / optimal pass counts beside those of every reverse proxy and CDN whose
// results the package ships (results/index.mjs), one line per implementation, and writes the
// required tests we fail (id, result, name) to `failures.txt` when given. The classification follows
// lib/display.mjs (determineTestResult): a test passes when its result is `true` and every test
// it depends on passes; `kind` is `required` unless it says `optimal` or `check`.
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, oursFile, failuresFile] = process.argv.slice(2)
if (!suiteDir || !oursFile) {
  console.error('usage: node cache-tests-summary.mjs <suite dir> <results.json> [failures.txt]')
  process.exit(2)
}
const load = async (rel) => (await import(pathToFileURL(path.join(suiteDir, rel)).href)).default
const suites = await load('tests/index.mjs')
suites.push(await load('tests/surrogate-control.mjs')) // cli.mjs runs it too
const index = await load('results/index.mjs')

const tests = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    tests.set(test.id, test)
  }
}

function passes (id, results, seen = new Set()) {
  const test = tests.get(id)
  const result = results[id]
  if (test === undefined || result !== true) return false
  if (seen.has(id)) return true
  seen.add(id)
  return (test.depends_on || []).every(dep => passes(dep, results, seen))
}

function summarise (results) {
  const counts = { required: 0, requiredTotal: 0, optimal: 0, optimalTotal: 0, failed: [] }
  for (const [id, test] of tests) {
    const kind = test.kind || 'required'
    if (kind === 'check') continue
    const ok = passes(id, results)
    if (kind === 'required') {
      counts.requiredTotal++
      if (ok) counts.required++
      else counts.failed.push(id)
    } else if (kind === 'optimal') {
      counts.optimalTotal++
      if (ok) counts.optimal++
    }
  }
  return counts
}

const ours = summarise(JSON.parse(fs.readFileSync(oursFile, 'utf8')))
const rows = [['cache-layer (this build)', ours]]
for (const item of index) {
  if (item.type !== 'rev-proxy' && item.type !== 'cdn') continue
  const file = path.join(suiteDir, 'results', item.file)
  if (!fs.existsSync(file)) continue
  const label = item.version ? `${item.name} ${item.version}` : item.name
  rows.push([label, summarise(JSON.parse(fs.readFileSync(file, 'utf8')))])
}
console.log(`${'implementation'.padEnd(34)} required (of ${ours.requiredTotal})  optimal (of ${ours.optimalTotal})`)
for (const [label, c] of rows) {
  console.log(`${label.padEnd(34)} ${String(c.required).padStart(8)}            ${String(c.optimal).padStart(6)}`)
}
if (failuresFile) {
  const raw = JSON.parse(fs.readFileSync(oursFile, 'utf8'))
  const lines = ours.failed.map(id => {
    const r = raw[id]
    const why = r === undefined ? 'untested' : (r === true ? 'dependency failed' : JSON.stringify(r))
    return `${id}\t${why}\t${tests.get(id).name}`
  })
  fs.writeFileSync(failuresFile, lines.join('\n') + '\n')
}
// Machine-readable last line for scripts/cache-tests.sh.
console.log(`REQUIRED=${ours.required}`)
