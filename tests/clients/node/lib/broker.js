'use strict'
// Starts a Takhin broker for a node:test file, the same way the Python fixture does:
// free 127.0.0.1 ports, fresh data dir, stdin kept as a pipe (--exit-on-stdin-eof),
// readiness = TCP port connectable (20 s), teardown = SIGTERM, 10 s, SIGKILL.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..')

function findBinary () {
  const candidates = []
  if (process.env.TAKHIN_BIN) {
    try { fs.accessSync(process.env.TAKHIN_BIN, fs.constants.X_OK) } catch (e) {
      throw new Error(`TAKHIN_BIN=${process.env.TAKHIN_BIN} is not an executable file`)
    }
    return process.env.TAKHIN_BIN
  }
  if (process.env.CARGO_TARGET_DIR) candidates.push(path.join(process.env.CARGO_TARGET_DIR, 'debug', 'takhin'))
  candidates.push(path.join(REPO_ROOT, 'target', 'debug', 'takhin'))
  candidates.push(path.join(os.homedir(), '.cache', 'takhin-target', 'debug', 'takhin'))
  for (const c of candidates) {
    try { fs.accessSync(c, fs.constants.X_OK); return c } catch (_) {}
  }
  throw new Error('takhin broker binary not found: set TAKHIN_BIN or run `cargo build --bin takhin`')
}

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function canConnect (port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port })
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { s.destroy(); resolve(false) })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function startBroker (extraArgs = []) {
  const bin = findBinary()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'takhin-node-'))
  const dataDir = path.join(dir, 'data')
  const logPath = path.join(dir, 'broker.log')
  const port = await freePort()
  const metricsPort = await freePort()
  const args = ['broker', '--data-dir', dataDir, '--kafka-listen', `127.0.0.1:${port}`,
    '--admin-listen', `127.0.0.1:${metricsPort}`, '--schema-registry-listen', 'none', '--exit-on-stdin-eof',
    '--group-initial-rebalance-delay-ms', '0', ...extraArgs]
  const log = fs.openSync(logPath, 'a')
  const proc = spawn(bin, args, { stdio: ['pipe', log, log] })
  let exited = null
  proc.on('exit', (code, signal) => { exited = { code, signal } })
  proc.on('error', (err) => { exited = { error: err.message } })
  const logTail = () => {
    try { return fs.readFileSync(logPath, 'utf8').split('\n').slice(-40).join('\n') } catch (_) { return '' }
  }
  const deadline = Date.now() + 20000
  while (!(await canConnect(port))) {
    if (exited) throw new Error(`takhin exited early (${JSON.stringify(exited)}):\n${logTail()}`)
    if (Date.now() > deadline) {
      proc.kill('SIGKILL')
      throw new Error(`takhin not listening on ${port} after 20 s:\n${logTail()}`)
    }
    await sleep(50)
  }
  return {
    bootstrap: `127.0.0.1:${port}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    dataDir,
    logTail,
    alive: () => exited === null,
    async stop () {
      if (exited === null && proc.exitCode === null && proc.signalCode === null) {
        const done = new Promise((resolve) => proc.once('exit', resolve))
        proc.kill('SIGTERM')
        const t = setTimeout(() => proc.kill('SIGKILL'), 10000)
        await done
        clearTimeout(t)
      }
      try { proc.stdin.end() } catch (_) {}
      fs.closeSync(log)
      if (!process.env.TAKHIN_KEEP_DATA) fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

async function waitUntil (pred, timeoutMs, what, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await pred()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

module.exports = { startBroker, waitUntil, sleep, findBinary }
