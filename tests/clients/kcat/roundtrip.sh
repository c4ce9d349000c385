#!/usr/bin/env bash
# kcat round trip against a Takhin broker.
#   roundtrip.sh BOOTSTRAP TOPIC CODEC COUNT
# Produces COUNT "key:value" lines with kcat -P (compression CODEC, two headers),
# then reads the whole topic back with kcat -C -e -J and prints the JSON lines on
# stdout. The topic must already exist. tests/clients/python/test_kcat.py checks
# the output; the script can also be run by hand.
set -euo pipefail
bootstrap=$1 topic=$2 codec=$3 count=$4
KCAT=${KCAT:-kcat}

for ((i = 0; i < count; i++)); do
  printf 'kcat-key-%d:kcat-value-%d-%s\n' "$((i % 11))" "$i" "$codec"
done | timeout 60 "$KCAT" -P -b "$bootstrap" -t "$topic" -z "$codec" -K: \
  -H "h-codec=$codec" -H "h-client=kcat" \
  -X acks=all -X linger.ms=5

timeout 60 "$KCAT" -C -b "$bootstrap" -t "$topic" -o beginning -e -J -q \
  -X enable.partition.eof=true
