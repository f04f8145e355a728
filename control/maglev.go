// Package control holds sluice's control plane: desired state, Maglev ring
// building, reconciliation into the data plane, failover, state and API.
package control

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
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
	bs := make([]MaglevBackend, 0, len(backends))
	seen := map[string]bool{}
	for _, b := range backends {
		if seen[b.ID] {
			return nil, fmt.Errorf("maglev: backend %q listed twice", b.ID)
		}
		seen[b.ID] = true
		if b.Slot == 0 {
			return nil, fmt.Errorf("maglev: backend %q has slot value 0", b.ID)
		}
		if b.Weight > 0 {
			bs = append(bs, b)
		}
	}
	table := make([]uint32, m)
	if len(bs) == 0 {
		return table, nil
	}
	if uint64(len(bs)) > uint64(m) {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d", len(bs), m)
	}
	slices.SortFunc(bs, func(a, b MaglevBackend) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	g := bs[0].Weight
	for _, b := range bs[1:] {
		g = gcd(g, b.Weight)
	}
	n := len(bs)
	// pos[i] is backend i's next candidate slot: permutation[j] =
	// (offset + j*skip) mod m, walked by addition so that no division
	// happens in the fill loop.
	pos := make([]uint32, n)
	skip := make([]uint32, n)
	turns := make([]uint32, n)
	for i, b := range bs {
		pos[i] = uint32(maglevHash(seed, 1, b.ID) % uint64(m))
		skip[i] = uint32(maglevHash(seed, 2, b.ID)%uint64(m-1) + 1)
		turns[i] = b.Weight / g
	}
	taken := make([]uint64, (m+63)/64) // a bitset stays in cache where []bool would not
	filled := uint32(0)
	// Claims go round the backends in order, backend i taking turns[i]
	// turns; (i, t) is the next claim's place in that cycle.
	i, t := 0, uint32(0)
	for filled < m && int(m-filled) > tail {
		c, sk := pos[i], skip[i]
		for taken[c>>6]&(1<<(c&63)) != 0 {
			c = addMod(c, sk, m)
		}
		taken[c>>6] |= 1 << (c & 63)
		table[c] = bs[i].Slot
		pos[i] = addMod(c, sk, m)
		filled++
		if t++; t == turns[i] {
			t = 0
			if i++; i == n {
				i = 0
			}
		}
	}
	if filled < m {
		fillTail(table, taken, bs, pos, skip, turns, m, i, t)
	}
	return table, nil
}

// fillTail finishes the table when few slots are free. Walking a
// permutation then costs about m/free probes per claim; instead, for each
// claim it computes, for every free slot, how many steps along the
// claiming backend's permutation that slot lies ahead, and takes the
// nearest. Every slot the backend walked past is taken (slots are never
// freed), so the nearest free slot is exactly the one the walk would reach:
// the table is identical, only faster to build.
func fillTail(table []uint32, taken []uint64, bs []MaglevBackend, pos, skip, turns []uint32, m uint32, i int, t uint32) {
	var free []uint32
	for c := uint32(0); c < m; c++ {
		if taken[c>>6]&(1<<(c&63)) == 0 {
			free = append(free, c)
		}
	}
	n := len(bs)
	inv := make([]uint64, n)
	for k := range bs {
		inv[k] = modInverse(uint64(skip[k]), uint64(m))
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
		best, bestJ := 0, uint64(m)
		p := uint64(pos[i])
		for k, c := range free {
			d := uint64(c) + uint64(m) - p // steps from the next candidate, times skip
			if d >= uint64(m) {
				d -= uint64(m)
			}
			j := mod(d * inv[i])
			if j < bestJ {
				best, bestJ = k, j
			}
		}
		c := free[best]
		free[best] = free[len(free)-1]
		free = free[:len(free)-1]
		table[c] = bs[i].Slot
		pos[i] = addMod(c, skip[i], m)
		if t++; t == turns[i] {
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
