package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// genState draws a valid desired state.
func genState(t *rapid.T) State {
	var s State
	nv := rapid.IntRange(0, 5).Draw(t, "vips")
	for i := range nv {
		port := rapid.IntRange(0, 65535).Draw(t, "port")
		v := VIP{
			VIP:       fmt.Sprintf("10.0.%d.%d:%d/%s", i, rapid.IntRange(1, 254).Draw(t, "a"), port, rapid.SampledFrom([]string{"tcp", "udp"}).Draw(t, "proto")),
			Forward:   rapid.SampledFrom([]string{"ipip", "dsr"}).Draw(t, "fwd"),
			RingSize:  rapid.SampledFrom([]uint32{4099, 65537, 655373}).Draw(t, "ring"),
			MinActive: rapid.IntRange(1, 3).Draw(t, "min"),
		}
		nb := rapid.IntRange(0, 6).Draw(t, "backends")
		for j := range nb {
			v.Backends = append(v.Backends, Backend{
				Addr:    fmt.Sprintf("10.1.%d.%d", i, j+1),
				Weight:  rapid.Uint32Range(0, 10).Draw(t, "w"),
				Drain:   rapid.Bool().Draw(t, "drain"),
				Standby: rapid.Bool().Draw(t, "standby"),
				Check: Check{Type: rapid.SampledFrom([]string{"tcp", "http", "udp", "none"}).Draw(t, "check"),
					Interval: Duration(time.Duration(rapid.IntRange(1, 5000).Draw(t, "interval")) * time.Millisecond),
					Rise:     rapid.IntRange(1, 5).Draw(t, "rise"), Fall: rapid.IntRange(1, 5).Draw(t, "fall")},
			})
			if port == 0 { // a VIP of every port: its checks name theirs
				v.Backends[j].Check.Port = uint16(rapid.IntRange(1, 65535).Draw(t, "check port"))
			}
		}
		if len(v.Backends) > 0 && rapid.Bool().Draw(t, "failover") {
			v.Policy = PolicyFailover
			v.Epoch = rapid.Uint64Range(0, 1<<40).Draw(t, "epoch")
			v.Primary = v.Backends[rapid.IntRange(0, len(v.Backends)-1).Draw(t, "primary")].Addr
			v.PromoteCmd = rapid.SampledFrom([]string{"", "/usr/local/bin/promote --fence"}).Draw(t, "cmd")
			v.Failback = rapid.Bool().Draw(t, "failback")
			for j := range v.Backends {
				v.Backends[j].Priority = rapid.IntRange(0, 100).Draw(t, "prio")
			}
		}
		s.VIPs = append(s.VIPs, v)
	}
	s.Normalize()
	return s
}

func openStore(t testing.TB) *BoltStore {
	st, err := OpenBoltStore(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestBackupRoundTrip: restore(save(S)) == S for generated states.
func TestBackupRoundTrip(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		want := genState(rt)
		if err := want.Validate(); err != nil {
			rt.Fatalf("generator made an invalid state: %v", err)
		}
		src := openStore(t)
		committed, err := src.Commit(func(s *State) error { s.VIPs = want.VIPs; return nil })
		if err != nil {
			rt.Fatal(err)
		}
		snap, err := NewSnapshot(committed, time.Now())
		if err != nil {
			rt.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "backup.json")
		if err := snap.WriteFile(path); err != nil {
			rt.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			rt.Fatal(err)
		}
		dst := openStore(t)
		got, err := RestoreSnapshot(dst, data)
		if err != nil {
			rt.Fatalf("restore: %v", err)
		}
		a, _ := json.Marshal(got.VIPs)
		b, _ := json.Marshal(committed.VIPs)
		if !bytes.Equal(a, b) {
			rt.Fatalf("restored state differs\n got %s\nwant %s", a, b)
		}
	})
}

func TestCommitIsAtomicAndRevisioned(t *testing.T) {
	st := openStore(t)
	s1, err := st.Commit(func(s *State) error {
		s.VIPs = []VIP{{VIP: "10.0.0.1:80/tcp"}}
		return nil
	})
	if err != nil || s1.Revision != 1 {
		t.Fatalf("first commit: rev %d err %v", s1.Revision, err)
	}
	// A bad change commits nothing.
	if _, err := st.Commit(func(s *State) error {
		s.VIPs = append(s.VIPs, VIP{VIP: "10.0.0.2:80/tcp", RingSize: 12})
		return nil
	}); err == nil {
		t.Fatal("invalid ring size accepted")
	}
	// An unchanged state commits nothing either.
	s2, err := st.Commit(func(s *State) error { return nil })
	if err != nil || s2.Revision != 1 {
		t.Fatalf("no-op commit: rev %d err %v", s2.Revision, err)
	}
	for i := range 5 {
		if _, err := st.Commit(func(s *State) error {
			s.VIPs[0].MinActive = i + 2
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	cur, _ := st.Load()
	if cur.Revision != 6 || len(cur.VIPs) != 1 {
		t.Fatalf("state %+v", cur)
	}
	arch, err := st.Archive()
	if err != nil {
		t.Fatal(err)
	}
	if len(arch) != 3 || arch[2].Revision != 5 {
		t.Fatalf("archive = %+v, want the last 3 previous revisions (3,4,5)", arch)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	cases := map[string]VIP{
		"vips[0].vip":                          {VIP: "10.0.0.1/tcp"},
		"vips[0] (10.0.0.1:80/tcp).forward":    {VIP: "10.0.0.1:80/tcp", Forward: "nat"},
		"ring_size 100":                        {VIP: "10.0.0.1:80/tcp", RingSize: 100},
		"backends[0].addr":                     {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "nope"}}},
		"backends[0].mac":                      {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", MAC: "zz"}}},
		"backends[0].check.type":               {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "icmp"}}}},
		"backends[0].check.codes":              {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "http", Codes: "abc"}}}},
		"backends[0].check.on_error":           {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{OnError: "panic"}}}},
		"check.service, tls: only for grpc":    {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "http", Service: "model"}}}},
		"backends[0].check.service":            {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "grpc", Service: "a b"}}}},
		"cannot be encapsulated to an IPv4":    {VIP: "[2001:db8::1]:80/tcp", Backends: []Backend{{Addr: "10.0.0.2"}}},
		"an IPv6 VIP cannot be encapsulated":   {VIP: "[2001:db8::1]:80/tcp", Forward: "gue", Backends: []Backend{{Addr: "10.0.0.2"}}},
		"gue_port 6080: only with forward":     {VIP: "10.0.0.1:80/tcp", Forward: "dsr", GUEPort: 6080},
		"backends[1].addr 10.0.0.2: listed":    {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2"}, {Addr: "10.0.0.2"}}},
		"check_via \"wire\": want addr or vip": {VIP: "10.0.0.1:80/tcp", CheckVia: "wire"},
		"backends[0].check.via \"wire\"":       {VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Via: "wire"}}}},
		"backends[0].check.port 8080: a check via the vip goes to the vip's port, 80": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "http", Port: 8080, Via: "vip"}}}},
		"backends[0].check.type udp: a check via the vip speaks the vip's protocol, tcp": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Check: Check{Type: "udp", Via: "vip"}}}},
		"backends[0].check.type tcp: a check via the vip speaks the vip's protocol, udp": {VIP: "10.0.0.1:53/udp", CheckVia: "vip",
			Backends: []Backend{{Addr: "10.0.0.2"}}},
		"backends[0].check.port: a check via a vip of every port needs one": {VIP: "10.0.0.1:0/tcp", CheckVia: "vip",
			Backends: []Backend{{Addr: "10.0.0.2"}}},
		"backends[0].load.metric \"http://10.0.0.9:8000/metrics#q\": the page must be the backend's own: want its address, 10.0.0.2": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Load: &Load{Metric: "http://10.0.0.9:8000/metrics#q", Target: 1, Interval: Duration(time.Second)}}}},
		"backends[0].load.metric \"http://metrics.example:8000/metrics#q\": the page must be the backend's own": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Load: &Load{Metric: "http://metrics.example:8000/metrics#q", Target: 1, Interval: Duration(time.Second)}}}},
		"backends[0].agent.interval 50ms: at least 100ms": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Agent: &Agent{Port: 7777, Interval: Duration(50 * time.Millisecond)}}}},
		"backends[0].load.interval 20ms: at least 100ms": {VIP: "10.0.0.1:80/tcp",
			Backends: []Backend{{Addr: "10.0.0.2", Load: &Load{Metric: "http://10.0.0.2:8000/metrics#q", Target: 1, Interval: Duration(20 * time.Millisecond)}}}},
	}
	for want, v := range cases {
		s := State{VIPs: []VIP{v}}
		s.Normalize()
		err := s.Validate()
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("%+v: error %v, want it to name %q", v, err, want)
		}
	}
}

// TestNormalizeGUEPort: forward gue gets the default port, and only it.
func TestNormalizeGUEPort(t *testing.T) {
	s := State{VIPs: []VIP{{VIP: "10.0.0.1:80/tcp", Forward: "GUE"}, {VIP: "10.0.0.1:81/tcp", Forward: "gue", GUEPort: 5555}, {VIP: "10.0.0.1:82/tcp"}}}
	s.Normalize()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint16{DefaultGUEPort, 5555, 0} {
		if s.VIPs[i].GUEPort != want {
			t.Errorf("%s: gue_port %d, want %d", s.VIPs[i].VIP, s.VIPs[i].GUEPort, want)
		}
	}
}

// FuzzSnapshot: every corrupt snapshot is refused and leaves the store as it was.
func FuzzSnapshot(f *testing.F) {
	st, err := OpenBoltStore(f.TempDir(), 10)
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	base, err := st.Commit(func(s *State) error {
		s.VIPs = []VIP{{VIP: "10.0.0.1:80/tcp", Backends: []Backend{{Addr: "10.0.1.1"}}}}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := NewSnapshot(base, time.Unix(1700000000, 0))
	goodBytes, _ := good.Marshal()
	f.Add(goodBytes)
	f.Add(goodBytes[:len(goodBytes)/2])
	f.Add(bytes.Replace(goodBytes, []byte(`"10.0.1.1"`), []byte(`"10.0.1.2"`), 1))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		before, err := st.Load()
		if err != nil {
			t.Fatal(err)
		}
		_, perr := ParseSnapshot(data)
		after, rerr := RestoreSnapshot(st, data)
		if (perr == nil) != (rerr == nil) {
			t.Fatalf("parse and restore disagree: %v / %v", perr, rerr)
		}
		if rerr != nil {
			now, _ := st.Load()
			if !Equal(before, now) {
				t.Fatalf("a refused snapshot changed the state: %v", rerr)
			}
			return
		}
		// Accepted: it must have carried a valid checksum over its state.
		var s Snapshot
		if err := json.Unmarshal(data, &s); err != nil || s.Format != SnapshotFormat {
			t.Fatalf("accepted something that is not a snapshot: %q", data)
		}
		_ = after
	})
}

// TestOpenRefusesDamagedFiles: a state.db truncated anywhere, or with a
// bit flipped in its meta pages or in the stored state, either still
// reads as a valid committed state (the last, or after a damaged meta
// page the one before) or is refused with ErrCorrupt naming the
// file; it never panics or faults the process. (Flips elsewhere in a
// bbolt file, in its branch pages or freelist, can make bbolt itself
// misbehave: bbolt checksums only its meta pages. The state carries a
// checksum of its own.)
func TestOpenRefusesDamagedFiles(t *testing.T) {
	src := t.TempDir()
	st, err := OpenBoltStore(src, 3)
	if err != nil {
		t.Fatal(err)
	}
	var last State
	for i := range 20 {
		if last, err = st.Commit(func(s *State) error {
			s.VIPs = []VIP{{VIP: fmt.Sprintf("10.0.0.1:%d/tcp", 80+i), Backends: []Backend{{Addr: "10.0.1.1"}, {Addr: "10.0.1.2"}}}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	good, err := os.ReadFile(filepath.Join(src, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var damaged [][]byte
	for _, n := range []int{1, 100, 4095, 4096, 8191, 8192, 12288, len(good) / 2, len(good) - 4096, len(good) - 1} {
		damaged = append(damaged, good[:n])
	}
	raw, _ := json.Marshal(last)
	var copies []int // bbolt may keep old copies of the page in free space
	for at := 0; ; {
		i := bytes.Index(good[at:], raw)
		if i < 0 {
			break
		}
		copies, at = append(copies, at+i), at+i+1
	}
	if len(copies) == 0 {
		t.Fatal("the stored state is not in the file")
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	for i := range 64 { // both meta pages' headers and fields
		for _, off := range []int{i, 4096 + i} {
			b := bytes.Clone(good)
			b[off] ^= byte(1 << rng.IntN(8))
			damaged = append(damaged, b)
		}
	}
	for i := 0; i < len(raw); i += 1 + rng.IntN(6) { // the same flip in every copy of the state
		b, bit := bytes.Clone(good), byte(1<<rng.IntN(8))
		for _, at := range copies {
			b[at+i] ^= bit
		}
		damaged = append(damaged, b)
	}
	refused := 0
	for i, b := range damaged {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := OpenBoltStore(dir, 3)
		if err == nil {
			got, lerr := st.Load()
			st.Close()
			// A damaged meta page makes bbolt fall back to the other
			// one: the transaction before, a valid older revision.
			if lerr != nil || !(Equal(got, last) || got.Revision == last.Revision-1) {
				t.Fatalf("case %d: opened, but Load gave %+v, %v", i, got, lerr)
			}
			continue
		}
		refused++
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Join(dir, StateFile)) {
			t.Fatalf("case %d: %v, want ErrCorrupt naming the file", i, err)
		}
	}
	t.Logf("%d damaged files: %d refused, %d still valid", len(damaged), refused, len(damaged)-refused)
	if refused < 10 {
		t.Fatalf("only %d of %d damaged files refused: the truncations at least must be", refused, len(damaged))
	}
}

// TestTimelineIsBounded: 100 000 flaps, recorded one transition at a time
// as the daemon does, leave at most MaxEvents in memory and on disk (the
// newest), a bounded state.db, and events older than the retention gone.
func TestTimelineIsBounded(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenBoltStore(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	const keep = 2000
	st.SetTimelineLimits(TimelineLimits{Retention: time.Hour, MaxEvents: keep})
	t0 := time.Now().Add(-2 * time.Hour) // the first half is past the retention
	const flaps = 100_000
	for i := range flaps {
		at := t0.Add(time.Duration(i) * 2 * time.Hour / flaps)
		if err := st.AppendTimeline([]TimelineEvent{{Time: at, VIP: "10.0.0.1:80/tcp", Backend: "10.0.1.1", Available: i%2 == 0}}); err != nil {
			t.Fatal(err)
		}
	}
	st.FlushTimeline()
	check := func(what string, evs []TimelineEvent) {
		t.Helper()
		if len(evs) != keep {
			t.Fatalf("%s: %d events kept, want %d", what, len(evs), keep)
		}
		if last := evs[len(evs)-1]; !last.Time.Equal(t0.Add(time.Duration(flaps-1) * 2 * time.Hour / flaps)) {
			t.Fatalf("%s: newest kept event at %v, not the last recorded", what, last.Time)
		}
	}
	mem, _ := st.Timeline()
	check("memory", mem)
	st.Close()
	fi, err := os.Stat(filepath.Join(dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("state.db after %d flaps, %d kept: %d bytes", flaps, keep, fi.Size())
	if fi.Size() > 4<<20 {
		t.Fatalf("state.db is %d bytes after the timeline was bounded to %d events", fi.Size(), keep)
	}
	st, err = OpenBoltStore(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	disk, _ := st.Timeline()
	check("reopened", disk)
	// Retention: a limit of one hour drops what is older, on the next write.
	st.SetTimelineLimits(TimelineLimits{Retention: 30 * time.Minute, MaxEvents: keep})
	mem, _ = st.Timeline()
	for _, e := range mem {
		if e.Time.Before(time.Now().Add(-31 * time.Minute)) {
			t.Fatalf("an event of %v outlived a 30 min retention", e.Time)
		}
	}
}

// TestWritesAfterCloseAreRefused: commits and replicated states racing
// Close either land before it, archive included, or are refused with
// ErrClosed; before, a late one sent on the closed archive queue and
// the process panicked.
func TestWritesAfterCloseAreRefused(t *testing.T) {
	for round := range 20 {
		st, err := OpenBoltStore(t.TempDir(), 10)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		landed := make(chan struct{}, 1<<16)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					var err error
					if w%2 == 0 {
						_, err = st.Commit(func(s *State) error {
							s.VIPs = []VIP{{VIP: fmt.Sprintf("10.0.%d.%d:80/tcp", w, i%250+1)}}
							return nil
						})
					} else {
						_, err = st.Replace(State{Revision: uint64(1000*w + i + 1), VIPs: []VIP{{VIP: fmt.Sprintf("10.1.%d.%d:80/tcp", w, i%250+1)}}})
					}
					if err != nil {
						errs <- err
						return
					}
					select {
					case landed <- struct{}{}:
					default:
					}
				}
			}()
		}
		for range 5 * round { // Close after more writes each round
			<-landed
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("round %d: a write racing Close: %v, want ErrClosed", round, err)
			}
		}
	}
}
