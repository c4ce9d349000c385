'use strict'
// kafkajs consumer group: 3 members over 6 partitions consume every message once
// under stable membership; a 4th member joins and one leaves (rebalances), and all
// messages are still consumed.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { Kafka, logLevel } = require('kafkajs')
const { startBroker, waitUntil, sleep } = require('./lib/broker')

const PARTITIONS = 6
let broker
let kafka

before(async () => {
  broker = await startBroker()
  kafka = new Kafka({ clientId: 'takhin-node-grp', brokers: [broker.bootstrap], logLevel: logLevel.ERROR })
})

after(async () => {
  if (broker) {
    if (!broker.alive()) console.log(`broker died during the tests:\n${broker.logTail()}`)
    await broker.stop()
  }
})

function member (name, groupId, topic) {
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500, rebalanceTimeout: 20000 })
  const m = { name, consumer, consumed: [], joins: [], assignment: [] }
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    m.assignment = (e.payload.memberAssignment[topic] || []).slice().sort()
    m.joins.push({ memberId: e.payload.memberId, assignment: m.assignment })
  })
  m.start = async () => {
    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        m.consumed.push({ partition, offset: Number(message.offset), value: message.value.toString() })
      }
    })
    return m
  }
  m.stop = async () => { await consumer.disconnect(); m.assignment = [] }
  return m
}

function balanced (members) {
  const all = members.map((m) => m.assignment)
  const flat = all.flat()
  return all.every((a) => a.length > 0) && flat.length === PARTITIONS && new Set(flat).size === PARTITIONS
}

async function produce (topic, prefix, n) {
  const producer = kafka.producer()
  await producer.connect()
  try {
    const messages = []
    for (let i = 0; i < n; i++) messages.push({ key: `k${i % 41}`, value: `${prefix}-${i}` })
    for (let b = 0; b < n; b += 100) {
      await producer.send({ topic, acks: -1, messages: messages.slice(b, b + 100) })
    }
    return messages.map((m) => m.value)
  } finally { await producer.disconnect() }
}

test('kafkajs consumer group: exactly once when stable, rebalance on join/leave', { timeout: 240000 }, async () => {
  const topic = `grp-js-${Date.now()}`
  const groupId = `grp-js-${Date.now()}`
  const admin = kafka.admin()
  await admin.connect()
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }], waitForLeaders: true })
  } finally { await admin.disconnect() }

  const members = []
  try {
    for (let i = 0; i < 3; i++) members.push(await member(`m${i}`, groupId, topic).start())
    await waitUntil(() => balanced(members), 60000, '3 members balanced over 6 partitions')
    assert.deepEqual(members.map((m) => m.assignment.length), [2, 2, 2])

    const want1 = await produce(topic, 'p1', 600)
    const consumedValues = () => new Set(members.flatMap((m) => m.consumed.map((c) => c.value)))
    await waitUntil(() => want1.every((v) => consumedValues().has(v)), 60000, 'phase 1 consumed')
    await sleep(1000)
    const pairs = members.flatMap((m) => m.consumed.map((c) => `${c.partition}:${c.offset}`))
    assert.equal(pairs.length, 600, `stable group delivered ${pairs.length} times for 600 messages`)
    assert.equal(new Set(pairs).size, 600)
    for (const m of members) {
      for (const c of m.consumed) assert.ok(m.assignment.includes(c.partition), `${m.name} consumed outside its assignment`)
    }

    // a 4th member joins
    const joinsBefore = members.map((m) => m.joins.length)
    const m3 = await member('m3', groupId, topic).start()
    members.push(m3)
    // The old members' assignments are stale until their own GROUP_JOIN arrives (and may
    // already look balanced next to m3's), so wait for every rejoin too.
    const rejoined = () => members.slice(0, 3).every((m, i) => m.joins.length > joinsBefore[i])
    await waitUntil(() => m3.assignment.length > 0 && rejoined() && balanced(members), 60000,
      '4 members rejoined and balanced')
    members.slice(0, 3).forEach((m, i) => assert.ok(m.joins.length > joinsBefore[i], `${m.name} did not rejoin`))
    const want2 = await produce(topic, 'p2', 400)

    // one member leaves
    const leaver = members[0]
    await leaver.stop()
    const live = members.slice(1)
    await waitUntil(() => balanced(live) && live.every((m) => m.assignment.length === 2), 60000, '3 remaining members balanced')
    const want3 = await produce(topic, 'p3', 400)
    const want = [...want1, ...want2, ...want3]
    await waitUntil(() => want.every((v) => consumedValues().has(v)), 90000, 'all phases consumed')
    const extra = [...consumedValues()].filter((v) => !want.includes(v))
    assert.deepEqual(extra, [], 'consumed values never produced')
  } finally {
    for (const m of members) { try { await m.stop() } catch (_) {} }
  }
})
