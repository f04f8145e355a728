package ha

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
	"time"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func TestAdvertRoundTripAndRefusals(t *testing.T) {
	a := Advert{Priority: 200, Interval: 100 * time.Millisecond, Boot: 1700000000000000000, Seq: 42, Revision: 7, Node: "lb-a", Master: true}
	b, err := a.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b, key)
	if err != nil || got != a {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	cases := []struct {
		name string
		data []byte
		key  []byte
		want error
	}{
		{"wrong key", b, []byte("another key"), ErrMAC},
		{"flipped bit", func() []byte { c := bytes.Clone(b); c[20] ^= 1; return c }(), key, ErrMAC},
		{"truncated", b[:50], key, ErrLength},
		{"padded", append(bytes.Clone(b), 0), key, ErrLength},
		{"magic", func() []byte { c := bytes.Clone(b); c[0] = 'X'; return c }(), key, ErrMagic},
		{"version", func() []byte { c := bytes.Clone(b); c[4] = 9; return c }(), key, ErrVersion},
		{"reserved bits", resign(b, func(c []byte) { c[flagsAt] |= 2 }), key, ErrMalformed},
		{"zero interval", resign(b, func(c []byte) { c[6], c[7] = 0, 0 }), key, ErrMalformed},
		{"no name", resign(b, func(c []byte) { clear(c[32 : 32+nameLen]) }), key, ErrMalformed},
	}
	for _, c := range cases {
		if _, err := Parse(c.data, c.key); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	var g ReplayGuard
	if err := g.Accept(got); err != nil {
		t.Fatal(err)
	}
	if err := g.Accept(got); !errors.Is(err, ErrReplay) || Reason(err) != "replay" {
		t.Fatalf("replayed advert: %v", err)
	}
	older := got
	older.Seq--
	if err := g.Accept(older); !errors.Is(err, ErrReplay) {
		t.Fatalf("older sequence: %v", err)
	}
	restarted := got
	restarted.Boot++
	restarted.Seq = 1
	if err := g.Accept(restarted); err != nil {
		t.Fatalf("a restarted peer's first advert: %v", err)
	}
}

// resign changes a copy of an advert and signs it again, so that the
// change is what the parser judges, not the MAC.
func resign(b []byte, f func([]byte)) []byte {
	c := bytes.Clone(b)
	f(c)
	m := hmac.New(sha256.New, key)
	m.Write(c[:macOffset])
	copy(c[macOffset:], m.Sum(nil))
	return c
}

// FuzzParse: arbitrary bytes never panic, and whatever is accepted carries
// a valid MAC, so re-marshalling it gives the same bytes.
func FuzzParse(f *testing.F) {
	good, _ := Advert{Priority: 100, Interval: time.Second, Boot: 1, Seq: 2, Revision: 3, Node: "n"}.Marshal(key)
	f.Add(good)
	f.Add(resign(good, func(c []byte) { c[flagsAt] = flagMaster }))
	f.Add(resign(good, func(c []byte) { c[flagsAt+3] = 1 }))
	f.Add(good[:10])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data, key)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("unclassified refusal: %v", err)
			}
			return
		}
		again, err := a.Marshal(key)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted %x, which does not re-marshal to itself (%v)", data, err)
		}
	})
}

func TestFSMTimings(t *testing.T) {
	t0 := time.Unix(0, 0)
	adv := 100 * time.Millisecond
	f := NewFSM("lb-b", 100, adv, false, t0)
	// 3 × 100ms + (256-100)/256 × 100ms = 360.9375ms
	if want := 300*time.Millisecond + 60937500*time.Nanosecond; f.MasterDown() != want {
		t.Fatalf("MasterDown = %v, want %v", f.MasterDown(), want)
	}
	if f.Tick(t0.Add(f.MasterDown()-time.Millisecond)) != Backup {
		t.Fatal("took over before master-down")
	}
	master := Advert{Priority: 200, Interval: adv, Node: "lb-a", Master: true}
	f.OnAdvert(master, t0.Add(200*time.Millisecond), true) // the master is alive: timer restarts
	if f.Tick(t0.Add(400*time.Millisecond)) != Backup {
		t.Fatal("took over despite a fresh advert")
	}
	if f.Tick(t0.Add(200*time.Millisecond+f.MasterDown())) != Master {
		t.Fatal("did not take over after master-down without adverts")
	}
	// Dual master after a partition: the higher priority wins at once.
	if f.OnAdvert(master, t0.Add(time.Second), true) != Backup {
		t.Fatal("lower priority master did not step down")
	}
	// Planned handoff: a priority-0 advert hands over at once.
	f.OnAdvert(Advert{Priority: 0, Interval: adv, Node: "lb-a"}, t0.Add(2*time.Second), true)
	if f.Tick(t0.Add(2*time.Second)) != Master {
		t.Fatal("no takeover right after a priority-0 advert")
	}
	// Fault: a master whose link goes down becomes backup and stays so.
	f.SetFault(true, t0.Add(3*time.Second))
	if f.Role() != Backup || f.Tick(t0.Add(10*time.Second)) != Backup {
		t.Fatal("a node in fault must be backup")
	}
	f.SetFault(false, t0.Add(10*time.Second))
	if f.Tick(t0.Add(10*time.Second+f.MasterDown()-time.Millisecond)) != Backup || f.Tick(t0.Add(10*time.Second+f.MasterDown())) != Master {
		t.Fatal("after a fault a node waits one master-down interval")
	}
	// Equal priorities: the larger name wins.
	g := NewFSM("lb-a", 100, adv, false, t0)
	g.Tick(t0.Add(time.Second))
	if g.OnAdvert(Advert{Priority: 100, Interval: adv, Node: "lb-b", Master: true}, t0.Add(time.Second), true) != Backup {
		t.Fatal("equal priority: lb-a should yield to lb-b")
	}
	// Pre-emption: a backup that outranks the master takes over at once when allowed.
	// Only once its sync is complete.
	p := NewFSM("lb-z", 250, adv, true, t0)
	low := Advert{Priority: 100, Interval: adv, Node: "lb-a", Master: true}
	p.OnAdvert(low, t0.Add(10*time.Millisecond), false)
	if p.Tick(t0.Add(10*time.Millisecond)) != Backup {
		t.Fatal("pre-empted before its sync was complete")
	}
	p.OnAdvert(low, t0.Add(20*time.Millisecond), true)
	if p.Tick(t0.Add(20*time.Millisecond)) != Master {
		t.Fatal("pre-empting backup did not take over")
	}
}
