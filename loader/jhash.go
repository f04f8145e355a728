package loader

// A Go copy of the kernel's jhash (lib/jhash.h), as bpf/helpers.h uses it:
// the VIP table must place keys where the data plane looks for them, and
// tests predict ring slots with it.

func rol32(w uint32, s uint) uint32 { return w<<s | w>>(32-s) }

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= rol32(b, 14)
	a ^= c
	a -= rol32(c, 11)
	b ^= a
	b -= rol32(a, 25)
	c ^= b
	c -= rol32(b, 16)
	a ^= c
	a -= rol32(c, 4)
	b ^= a
	b -= rol32(a, 14)
	c ^= b
	c -= rol32(b, 24)
	return c
}

func jhash3(a, b, c, initval uint32) uint32 {
	a += 0xdeadbeef + initval
	b += 0xdeadbeef + initval
	c += initval
	return jhashFinal(a, b, c)
}

func jhash4(k [4]uint32, initval uint32) uint32 {
	a := 0xdeadbeef + uint32(4<<2) + initval
	b, c := a, a
	a += k[0]
	b += k[1]
	c += k[2]
	// __jhash_mix
	a -= c
	a ^= rol32(c, 4)
	c += b
	b -= a
	b ^= rol32(a, 6)
	a += c
	c -= b
	c ^= rol32(b, 8)
	b += a
	a -= c
	a ^= rol32(c, 16)
	c += b
	b -= a
	b ^= rol32(a, 19)
	a += c
	c -= b
	c ^= rol32(b, 4)
	b += a
	a += k[3]
	return jhashFinal(a, b, c)
}
