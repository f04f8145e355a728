// Package ha is the advert protocol of an active/standby pair of sluice
// nodes: authenticated adverts, the VRRPv3-style master/backup state
// machine and the UDP advert transport. The pair itself (VIP ownership,
// replication, flow sync) is control/pair; its signed calls are
// control/peer's.
package ha

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/control/peer"
)

// Wire format of an advert (big endian), 112 bytes:
//
//	0  magic "SLHA"        4  version (2)       5  priority
//	6  advert interval, ms 8  boot (unix ns)    16 sequence
//	24 state revision      32 node name (40 bytes, zero padded)
//	72 flags (bit 0: the sender is master)      73 reserved, zero (7 bytes)
//	80 HMAC-SHA256 over bytes 0..79 with the pair's shared key
const (
	advertSize = 112
	macOffset  = 80
	version    = 2
	nameLen    = 40
	flagsAt    = 72

	flagMaster = 1
)

var magic = [4]byte{'S', 'L', 'H', 'A'}

// Reasons an advert is refused; each is counted in
// sluice_ha_bad_adverts_total{reason}.
var (
	ErrLength  = peer.ErrLength
	ErrMagic   = errors.New("magic")
	ErrVersion = errors.New("version")
	ErrMAC     = peer.ErrMAC
	ErrReplay  = peer.ErrReplay
	// ErrMalformed: the MAC is right but a field is not (reserved bits set).
	ErrMalformed = peer.ErrMalformed
	// ErrUnknownPeer: the sender's address is not a configured peer.
	ErrUnknownPeer = errors.New("unknown-peer")
	// ErrTTL: the advert arrived with a TTL (hop limit) below 255: it
	// was sent from off-link, so not by a peer.
	ErrTTL = errors.New("ttl")
	// ErrOwnName: an authentic advert carries this node's own name from
	// another address: two nodes share a name (counted and reported; the
	// addresses break the tie).
	ErrOwnName = errors.New("own-name")
)

// Reason names a refusal for metrics.
func Reason(err error) string {
	for _, e := range []error{ErrLength, ErrMagic, ErrVersion, ErrMAC, ErrReplay, ErrMalformed, ErrUnknownPeer, ErrTTL, ErrOwnName} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "other"
}

// Advert is one node's periodic announcement.
type Advert struct {
	Priority uint8 // 0 means "I am stepping down now"
	Interval time.Duration
	Boot     uint64 // when the sender started (unix ns): orders its sequences across restarts
	Seq      uint64
	Revision uint64 // the sender's desired-state revision
	Node     string // at most 40 bytes
	// Master: the sender is master. Backups advertise too (unlike VRRP),
	// so that the master sees its peers and their revisions.
	Master bool
}

// Marshal signs the advert with key.
func (a Advert) Marshal(key []byte) ([]byte, error) {
	if len(a.Node) == 0 || len(a.Node) > nameLen {
		return nil, fmt.Errorf("advert node name %q: 1 to %d bytes", a.Node, nameLen)
	}
	ms := a.Interval.Milliseconds()
	if ms <= 0 || ms > 0xffff {
		return nil, fmt.Errorf("advert interval %v: 1ms to 65s", a.Interval)
	}
	b := make([]byte, advertSize)
	copy(b[0:4], magic[:])
	b[4] = version
	b[5] = a.Priority
	binary.BigEndian.PutUint16(b[6:], uint16(ms))
	binary.BigEndian.PutUint64(b[8:], a.Boot)
	binary.BigEndian.PutUint64(b[16:], a.Seq)
	binary.BigEndian.PutUint64(b[24:], a.Revision)
	copy(b[32:32+nameLen], a.Node)
	if a.Master {
		b[flagsAt] = flagMaster
	}
	m := hmac.New(sha256.New, key)
	m.Write(b[:macOffset])
	copy(b[macOffset:], m.Sum(nil))
	return b, nil
}

// Parse checks an advert's size, magic, version and MAC (in constant
// time), and decodes it. It does not check for replays: see peer.ReplayGuard.
func Parse(b, key []byte) (Advert, error) {
	if len(b) != advertSize {
		return Advert{}, fmt.Errorf("advert of %d bytes, want %d: %w", len(b), advertSize, ErrLength)
	}
	if [4]byte(b[0:4]) != magic {
		return Advert{}, ErrMagic
	}
	if b[4] != version {
		return Advert{}, fmt.Errorf("advert version %d: %w", b[4], ErrVersion)
	}
	m := hmac.New(sha256.New, key)
	m.Write(b[:macOffset])
	if !hmac.Equal(m.Sum(nil), b[macOffset:]) {
		return Advert{}, ErrMAC
	}
	if b[flagsAt]&^flagMaster != 0 || binary.BigEndian.Uint64(b[flagsAt:])&0xffffffffffffff != 0 {
		return Advert{}, fmt.Errorf("advert flags %#x: %w", b[flagsAt:macOffset], ErrMalformed)
	}
	name := b[32 : 32+nameLen]
	n := 0
	for n < len(name) && name[n] != 0 {
		n++
	}
	for _, c := range name[n:] {
		if c != 0 {
			return Advert{}, fmt.Errorf("advert node name not zero padded: %w", ErrMalformed)
		}
	}
	if n == 0 {
		return Advert{}, fmt.Errorf("advert without a node name: %w", ErrMalformed)
	}
	if binary.BigEndian.Uint16(b[6:]) == 0 {
		return Advert{}, fmt.Errorf("advert interval 0: %w", ErrMalformed)
	}
	return Advert{
		Priority: b[5],
		Interval: time.Duration(binary.BigEndian.Uint16(b[6:])) * time.Millisecond,
		Boot:     binary.BigEndian.Uint64(b[8:]),
		Seq:      binary.BigEndian.Uint64(b[16:]),
		Revision: binary.BigEndian.Uint64(b[24:]),
		Node:     string(name[:n]),
		Master:   b[flagsAt]&flagMaster != 0,
	}, nil
}

// ReplayGuard refuses an advert unless its (boot, sequence) is newer than
// the last accepted from the same node.
type ReplayGuard struct{ peer.ReplayGuard }

// Accept records a as seen, or says why it is refused.
func (g *ReplayGuard) Accept(a Advert) error { return g.AcceptSeq(a.Node, a.Boot, a.Seq) }
