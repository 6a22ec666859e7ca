#!/usr/bin/env python3
"""Simulates the block schedule of the Hopper attention backward (flash_attention_sm90.cu) to see how far its length
is from the ideal: blocks are (KV group or query head, 128-key block x), dispatched in grid order onto SMS slots (one
block an SM); a block takes one time unit per (query head, 64-row query tile t) step over t = 2x ... T/64 - 1, and
adds its dQ share to tile t only after every key block above it that sees t has (the fixed order that makes the sums
the same every run). Prints the simulated length over the ideal (work / slots) for each form.

Usage: python3 scripts/attention-backward-schedule.py [--tokens 2048] [--sms 132] [--batch 4]
"""
import argparse

def length(units, heads_per_block, tiles, sms):
    keys = tiles // 2
    blocks = [(u, x) for u in range(units) for x in range(keys)]        # grid order: x fastest
    steps = {b: [(h, t) for h in range(heads_per_block) for t in range(2 * b[1], tiles)] for b in blocks}
    turn = {}   # (unit, head, tile) -> the key block whose turn it is
    queue, resident, at, time, work = iter(blocks), [], {}, 0, 0
    pending = True
    while pending or resident:
        while pending and len(resident) < sms:
            b = next(queue, None)
            if b is None: pending = False; break
            resident.append(b); at[b] = 0
        ready = [b for b in resident if turn.get((b[0],) + steps[b][at[b]], steps[b][at[b]][1] // 2) == b[1]]
        for b in ready:
            h, t = steps[b][at[b]]
            turn[(b[0], h, t)] = b[1] - 1
            at[b] += 1; work += 1
        resident = [b for b in resident if at[b] < len(steps[b])]
        time += 1
    return time / (work / sms)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', type=int, default=2048); p.add_argument('--sms', type=int, default=132)
    p.add_argument('--batch', type=int, default=4)
    a = p.parse_args()
    tiles = a.tokens // 64
    for name, heads, kv in [('llama2-7b', 32, 32), ('llama3-8b', 32, 8)]:
        group = heads // kv
        print(f'{name}: a KV group a block {length(a.batch * kv, group, tiles, a.sms):.3f} of the ideal'
              + (f', a query head a block {length(a.batch * heads, 1, tiles, a.sms):.3f}' if group > 1 else ''),
              flush=True)

if __name__ == '__main__':
    main()
