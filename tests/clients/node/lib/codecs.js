'use strict'
// Registers kafkajs compression codecs. kafkajs ships none + gzip. Others:
//  snappy: kafkajs-snappy (pure JS, snappyjs)
//  lz4:    kafkajs-lz4 depends on the `lz4` package, whose tarball ships macOS
//          binaries and needs a node-gyp rebuild; instead a small codec over the
//          pure-JS lz4js (LZ4 frame format, what Kafka uses) is used.
//  zstd:   @kafkajs/zstd needs the native `cppzst` addon, which does not build on
//          Node 20, so a small codec over @bokuweb/zstd-wasm (WebAssembly) is used.
// A codec whose package fails to load is reported as unavailable (tests skip it
// with the reason, or fail under TAKHIN_REQUIRE_ALL_CLIENTS=1).
const { CompressionTypes, CompressionCodecs } = require('kafkajs')

const unavailable = {}

async function registerCodecs () {
  try {
    CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy')
  } catch (e) { unavailable.snappy = `kafkajs-snappy: ${e.message}` }
  try {
    const lz4 = require('lz4js')
    CompressionCodecs[CompressionTypes.LZ4] = () => ({
      async compress (encoder) { return Buffer.from(lz4.compress(encoder.buffer)) },
      async decompress (buffer) { return Buffer.from(lz4.decompress(buffer)) }
    })
  } catch (e) { unavailable.lz4 = `lz4js: ${e.message}` }
  try {
    const zstd = require('@bokuweb/zstd-wasm')
    await zstd.init()
    CompressionCodecs[CompressionTypes.ZSTD] = () => ({
      async compress (encoder) { return Buffer.from(zstd.compress(encoder.buffer, 3)) },
      async decompress (buffer) { return Buffer.from(zstd.decompress(buffer)) }
    })
  } catch (e) { unavailable.zstd = `@bokuweb/zstd-wasm: ${e.message}` }
  return unavailable
}

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD
}

module.exports = { registerCodecs, CODECS }
