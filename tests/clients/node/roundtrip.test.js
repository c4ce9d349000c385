'use strict'
// kafkajs produce/consume round trip for every codec against a real Takhin broker.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { Kafka, logLevel } = require('kafkajs')
const { startBroker, waitUntil, sleep } = require('./lib/broker')
const { registerCodecs, CODECS } = require('./lib/codecs')

const N = 200
const PARTITIONS = 3
let broker
let kafka
let unavailable = {}

before(async () => {
  unavailable = await registerCodecs()
  broker = await startBroker()
  kafka = new Kafka({ clientId: 'takhin-node-rt', brokers: [broker.bootstrap], logLevel: logLevel.ERROR, retry: { retries: 5 } })
})

after(async () => {
  if (broker) {
    if (!broker.alive()) console.log(`broker died during the tests:\n${broker.logTail()}`)
    await broker.stop()
  }
})

for (const [name, type] of Object.entries(CODECS)) {
  test(`kafkajs round trip, codec ${name}`, { timeout: 120000 }, async (t) => {
    if (unavailable[name]) {
      const reason = `codec ${name} unavailable: ${unavailable[name]}`
      if (process.env.TAKHIN_REQUIRE_ALL_CLIENTS === '1') assert.fail(reason)
      console.log(`SKIP ${reason}`)
      t.skip(reason)
      return
    }
    const topic = `rt-js-${name}-${Date.now()}`
    const admin = kafka.admin()
    await admin.connect()
    try {
      assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }], waitForLeaders: true }), true)
    } finally { await admin.disconnect() }

    const baseTs = Date.now() - 3600 * 1000
    const msgs = []
    for (let i = 0; i < N; i++) {
      msgs.push({
        key: `js-key-${i % 19}`,
        value: `js-value-${i}-${name}-` + 'w'.repeat(i % 60),
        headers: { 'h-index': String(i), 'h-codec': name },
        timestamp: String(baseTs + i * 11)
      })
    }
    const producer = kafka.producer({ allowAutoTopicCreation: false })
    await producer.connect()
    const expected = new Map() // partition -> [{offset, i}]
    try {
      for (let b = 0; b < N; b += 50) {
        const batch = msgs.slice(b, b + 50)
        const res = await producer.send({ topic, acks: -1, compression: type, messages: batch })
        for (const r of res) assert.equal(r.errorCode, 0)
      }
    } finally { await producer.disconnect() }

    const consumer = kafka.consumer({ groupId: `rt-js-${name}-${Date.now()}`, sessionTimeout: 10000, heartbeatInterval: 500 })
    const got = new Map()
    let total = 0
    await consumer.connect()
    try {
      await consumer.subscribe({ topic, fromBeginning: true })
      await consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition, message }) => {
          if (!got.has(partition)) got.set(partition, [])
          got.get(partition).push(message)
          total++
        }
      })
      await waitUntil(() => total >= N, 60000, `${N} messages`)
      await sleep(1000) // nothing extra may arrive
    } finally { await consumer.disconnect() }

    assert.equal(total, N, `consumed ${total}, expected ${N}`)
    assert.equal(got.size, PARTITIONS, 'keys must spread over all partitions')
    const seen = new Set()
    for (const [partition, list] of got) {
      const offsets = list.map((m) => Number(m.offset))
      assert.deepEqual(offsets, offsets.map((_, j) => j), `partition ${partition}: offsets not contiguous from 0`)
      let prev = -1
      for (const m of list) {
        const i = Number(m.headers['h-index'].toString())
        assert.ok(i > prev, `partition ${partition}: out of produce order`)
        prev = i
        assert.ok(!seen.has(i), `duplicate ${i}`)
        seen.add(i)
        const want = msgs[i]
        assert.equal(m.key.toString(), want.key)
        assert.equal(m.value.toString(), want.value)
        assert.equal(m.headers['h-codec'].toString(), name)
        assert.deepEqual(Object.keys(m.headers).sort(), ['h-codec', 'h-index'])
        assert.equal(m.timestamp, want.timestamp)
      }
      expected.set(partition, list.length)
    }
    assert.equal(seen.size, N)
  })
}
