// Package control holds sluice's control plane: desired state, Maglev ring
// building, reconciliation into the data plane, failover, state and API.
package control

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
)

// MaglevBackend is one backend as Maglev sees it.
type MaglevBackend struct {
	// ID is the backend's identity (its address): offset and skip derive
	// from it and the seed, never from insertion order.
	ID string
	// Weight is the backend's share; 0 keeps it out of the ring.
	Weight uint32
	// Slot is the value the ring holds for this backend (its data-plane
	// backend index); it must not be 0, which means "no backend".
	Slot uint32
}

// maglevHash is 64-bit FNV-1a over (seed, salt, id), written out so that
// it allocates nothing.
func maglevHash(seed uint64, salt byte, id string) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	var b [9]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	b[8] = salt
	for _, c := range b {
		h = (h ^ uint64(c)) * prime
	}
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	return h
}

// BuildMaglev builds a Maglev lookup table of size m (a prime) as in
// Eisenbud et al., NSDI 2016, Pseudocode 1: backends take turns claiming
// their next free slot in permutation order, and a backend of weight w takes
// w turns per round (weights are reduced by their GCD first). The result
// depends only on the set of backends and the seed: the same set gives a
// byte-identical table in any order, on any node. With no weighted backend,
// every slot is 0.
func BuildMaglev(backends []MaglevBackend, m uint32, seed uint64) ([]uint32, error) {
	return buildMaglev(backends, m, seed, tailThreshold(m))
}

// tailThreshold is the count of free slots below which filling switches
// from walking permutations to scanning the free slots (see fillTail).
func tailThreshold(m uint32) int {
	return int(math.Sqrt(float64(m)) / 2)
}

func buildMaglev(backends []MaglevBackend, m uint32, seed uint64, tail int) ([]uint32, error) {
	if m < 2 || !isPrime(m) {
		return nil, fmt.Errorf("maglev table size %d: must be a prime", m)
	}
	// Sorted by identity: the turn order, and duplicates become neighbours.
	all := slices.Clone(backends)
	slices.SortFunc(all, func(a, b MaglevBackend) int { return strings.Compare(a.ID, b.ID) })
	bs := all[:0]
	for k, b := range all {
		if k > 0 && all[k-1].ID == b.ID {
			return nil, fmt.Errorf("maglev: backend %q listed twice", b.ID)
		}
		if b.Slot == 0 {
			return nil, fmt.Errorf("maglev: backend %q has slot value 0", b.ID)
		}
		if b.Weight > 0 {
			bs = append(bs, b) // in place: bs never overtakes k
		}
	}
	table := make([]uint32, m)
	if len(bs) == 0 {
		return table, nil
	}
	if uint64(len(bs)) > uint64(m) {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d", len(bs), m)
	}
	g := bs[0].Weight
	for _, b := range bs[1:] {
		g = gcd(g, b.Weight)
	}
	n := len(bs)
	// ws[i] walks backend i's permutation: permutation[j] = (offset +
	// j*skip) mod m, by addition so that no division happens in the fill
	// loop. One array of small structs keeps a claim's reads on one line.
	ws := make([]walker, n)
	for i, b := range bs {
		ws[i] = walker{
			pos:   uint32(maglevHash(seed, 1, b.ID) % uint64(m)),
			skip:  uint32(maglevHash(seed, 2, b.ID)%uint64(m-1) + 1),
			slot:  b.Slot,
			turns: b.Weight / g,
		}
	}
	taken := make([]uint64, (m+63)/64) // a bitset stays in cache where []bool would not
	left := int(m)
	uniform := true
	for _, w := range ws {
		uniform = uniform && w.turns == 1
	}
	// Claims go round the backends in order, backend i taking turns
	// turns; (i, t) is the next claim's place in that cycle.
	i, t := 0, uint32(0)
	if uniform {
		// Equal weights: one claim per backend per round.
		i = fillUniform(table, taken, ws, m, left-tail)
		left = tail
	}
	for left > tail {
		w := &ws[i]
		table[w.claim(taken, m)] = w.slot
		left--
		if t++; t == w.turns {
			t = 0
			if i++; i == n {
				i = 0
			}
		}
	}
	if left > 0 {
		fillTail(table, taken, ws, m, i, t)
	}
	return table, nil
}

// claim takes the first free slot at or after the walker's position in its
// permutation and moves the walker past it.
func (w *walker) claim(taken []uint64, m uint32) uint32 {
	c, sk := w.pos, w.skip
	for {
		word, bit := taken[c>>6], uint64(1)<<(c&63)
		if word&bit == 0 {
			taken[c>>6] = word | bit
			break
		}
		c = addMod(c, sk, m)
	}
	w.pos = addMod(c, sk, m)
	return c
}

// fillUniform makes count claims, one per backend in turn from backend 0,
// and returns the backend whose turn is next: the fill loop of
// buildMaglev without weighted turns, the common case.
func fillUniform(table []uint32, taken []uint64, ws []walker, m uint32, count int) int {
	i := 0
	for ; count > 0; count-- {
		w := &ws[i]
		table[w.claim(taken, m)] = w.slot
		if i++; i == len(ws) {
			i = 0
		}
	}
	return i
}

// walker is one backend's place in its permutation.
type walker struct {
	pos   uint32 // next candidate slot
	skip  uint32
	slot  uint32 // the value its slots hold
	turns uint32 // claims per round (weight / gcd of weights)
}

// fillTail finishes the table when few slots are free. Walking a
// permutation then costs about m/free probes per claim; instead, for each
// claim it computes, for every free slot, how many steps along the
// claiming backend's permutation that slot lies ahead, and takes the
// nearest. Every slot the backend walked past is taken (slots are never
// freed), so the nearest free slot is exactly the one the walk would reach:
// the table is identical, only faster to build.
func fillTail(table []uint32, taken []uint64, ws []walker, m uint32, i int, t uint32) {
	var free []uint32
	for c := uint32(0); c < m; c++ {
		if taken[c>>6]&(1<<(c&63)) == 0 {
			free = append(free, c)
		}
	}
	n := len(ws)
	inv := make([]uint64, n)
	for k := range ws {
		inv[k] = modInverse(uint64(ws[k].skip), uint64(m))
	}
	recip := ^uint64(0) / uint64(m)
	mod := func(a uint64) uint64 { // Barrett reduction: a mod m without a divide
		q, _ := bits.Mul64(a, recip)
		r := a - q*uint64(m)
		if r >= uint64(m) {
			r -= uint64(m)
		}
		return r
	}
	for len(free) > 0 {
		w := &ws[i]
		best, bestJ := 0, uint64(m)
		p := uint64(w.pos)
		iv := inv[i]
		for k, c := range free {
			// d = (c - p) mod m: steps from the next candidate, times
			// skip. The wrap is computed, not branched on: it is taken
			// at random.
			d := uint64(c) + uint64(m) - p
			d -= uint64(m) & uint64(int64(uint64(m)-1-d)>>63)
			j := mod(d * iv)
			if j < bestJ {
				best, bestJ = k, j
			}
		}
		c := free[best]
		free[best] = free[len(free)-1]
		free = free[:len(free)-1]
		table[c] = w.slot
		w.pos = addMod(c, w.skip, m)
		if t++; t == w.turns {
			t = 0
			if i++; i == n {
				i = 0
			}
		}
	}
}

// addMod returns (c + sk) mod m for c, sk < m < 2^31, without a branch:
// the wrap is taken about half the time, so a branch would mispredict.
func addMod(c, sk, m uint32) uint32 {
	c += sk
	if d := c - m; c >= m {
		c = d // compiled to a conditional move
	}
	return c
}

// modInverse returns x^-1 mod m for prime m.
func modInverse(x, m uint64) uint64 {
	r, e := uint64(1), m-2
	for b := x % m; e > 0; e >>= 1 {
		if e&1 == 1 {
			r = r * b % m
		}
		b = b * b % m
	}
	return r
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for i := uint32(2); uint64(i)*uint64(i) <= uint64(n); i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}
