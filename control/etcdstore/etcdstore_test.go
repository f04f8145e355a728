package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// etcd starts a real three-member etcd cluster and returns a client.
func etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	testutil.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := netlab.New(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	c, err := env.StartEtcd(ctx, 3, netip.MustParseAddr("10.77.0.31"), 24)
	if err != nil {
		t.Fatal(err)
	}
	h, err := env.AddHost("cli", netip.MustParsePrefix("10.77.0.40/24"), netlab.HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.Client(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func addVIP(name string) func(*state.State) error {
	return func(s *state.State) error {
		s.VIPs = append(s.VIPs, state.VIP{VIP: name, Forward: "ipip"})
		return nil
	}
}

func addBackend(vip, addr string) func(*state.State) error {
	return func(s *state.State) error {
		k, err := state.ParseVIPKey(vip)
		if err != nil {
			return err
		}
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		s.VIPs[i].Backends = append(s.VIPs[i].Backends, state.Backend{Addr: addr, Weight: 1})
		return nil
	}
}

// TestStore: commits are guarded transactions whose revision is etcd's,
// 40 concurrent writers lose no update, a watcher sees every committed
// state in order and ends at the same state, Replace swaps the whole
// state in one revision, and the seed is set once.
func TestStore(t *testing.T) {
	cl := etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := New(cl, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cl, "a/b"); err == nil {
		t.Fatal("cluster name a/b accepted")
	}
	empty, err := s.Load(ctx)
	if err != nil || empty.Revision != 0 || len(empty.VIPs) != 0 {
		t.Fatalf("empty store: %+v %v", empty, err)
	}
	watched := make(chan state.State, 1000)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go s.Watch(wctx, 0, watched, func(err error) { t.Errorf("a good state refused: %v", err) })

	const vip = "10.77.1.100:80/tcp"
	st, err := s.Commit(ctx, addVIP(vip))
	if err != nil {
		t.Fatal(err)
	}
	if same, err := s.Commit(ctx, func(*state.State) error { return nil }); err != nil || same.Revision != st.Revision {
		t.Fatalf("a no-op commit: revision %d -> %d, %v", st.Revision, same.Revision, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	added := map[string]bool{}
	conflicts := 0
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := fmt.Sprintf("10.77.2.%d", i+1)
			_, err := s.Commit(ctx, addBackend(vip, addr))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				added[addr] = true
			case errors.Is(err, ErrConflict):
				conflicts++ // refused, and it says so: allowed, but it must not land
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	final, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, b := range final.VIPs[0].Backends {
		got[b.Addr] = true
	}
	if len(got) != len(added) || len(added) < 30 {
		t.Fatalf("40 concurrent writers: %d committed, %d refused as conflicts, %d backends in the state", len(added), conflicts, len(got))
	}
	for a := range added {
		if !got[a] {
			t.Fatalf("committed backend %s is not in the state", a)
		}
	}
	t.Logf("40 concurrent writers on one key: %d committed, %d refused as conflicts", len(added), conflicts)
	get, err := cl.Get(ctx, s.prefix+revKey)
	if err != nil || uint64(get.Kvs[0].ModRevision) != final.Revision {
		t.Fatalf("state revision %d, guard key at %v (%v)", final.Revision, get, err)
	}
	var last state.State
	for last.Revision != final.Revision {
		prev := last.Revision
		select {
		case last = <-watched:
		case <-ctx.Done():
			t.Fatalf("watch stopped at revision %d of %d", prev, final.Revision)
		}
		if last.Revision <= prev {
			t.Fatalf("watch went from revision %d to %d", prev, last.Revision)
		}
	}
	if !state.Equal(last, final) {
		t.Fatalf("the watcher ended at\n%+v\nthe store holds\n%+v", last, final)
	}

	restored, err := s.Replace(ctx, state.State{VIPs: []state.VIP{{VIP: "10.77.1.101:53/udp", Forward: "ipip"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx); len(got.VIPs) != 1 || got.VIPs[0].VIP != "10.77.1.101:53/udp" || got.Revision != restored.Revision {
		t.Fatalf("after Replace: %+v", got)
	}
	if err := s.EnsureSeed(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureSeed(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureSeed(ctx, 8); err == nil {
		t.Fatal("a second seed accepted")
	} else {
		t.Log(err)
	}
}

// TestCommitRefusesBadChange: a change that fails or does not validate
// writes nothing.
func TestCommitRefusesBadChange(t *testing.T) {
	cl := etcd(t)
	ctx := context.Background()
	s, _ := New(cl, "t2")
	before, err := s.Commit(ctx, addVIP("10.77.1.100:80/tcp"))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if _, err := s.Commit(ctx, func(*state.State) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing change: %v", err)
	}
	if _, err := s.Commit(ctx, addBackend("10.77.1.100:80/tcp", "not-an-address")); err == nil {
		t.Fatal("invalid backend accepted")
	}
	after, err := s.Load(ctx)
	if err != nil || !state.Equal(before, after) {
		t.Fatalf("a refused change wrote: %+v -> %+v (%v)", before, after, err)
	}
}

// TestCommitConflictNamed: a change that loses the race on every try is
// refused as ErrConflict, naming the revision, and writes nothing of its
// own.
func TestCommitConflictNamed(t *testing.T) {
	cl := etcd(t)
	ctx := context.Background()
	s, _ := New(cl, "t3")
	other, _ := New(cl, "t3")
	if _, err := s.Commit(ctx, addVIP("10.77.1.100:80/tcp")); err != nil {
		t.Fatal(err)
	}
	n := 0
	_, err := s.Commit(ctx, func(st *state.State) error {
		// Another writer commits between this read and its write, every time.
		n++
		if _, err := other.Commit(ctx, addBackend("10.77.1.100:80/tcp", fmt.Sprintf("10.77.2.%d", n))); err != nil {
			return err
		}
		return addBackend("10.77.1.100:80/tcp", "10.77.9.9")(st)
	})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("a change that always loses: %v", err)
	}
	t.Log(err)
	final, _ := s.Load(ctx)
	for _, b := range final.VIPs[0].Backends {
		if b.Addr == "10.77.9.9" {
			t.Fatal("the refused change landed")
		}
	}
	if len(final.VIPs[0].Backends) != commitTries {
		t.Fatalf("%d of the other writer's %d changes landed", len(final.VIPs[0].Backends), commitTries)
	}
}

// TestWatchRefusesBadValues: values written around sluice (etcdctl's
// puts, here through the client): a VIP with ring_size 4 and a value that
// is not JSON are refused by the watch (named, once each), by Load and
// by a change, and never sent; the next good value is sent. A VIP with
// fields of a newer version is taken, and those fields survive both a
// change to another VIP and a change to that VIP (at its level, in its
// backend and its backend's check); a restore replaces a refused state.
func TestWatchRefusesBadValues(t *testing.T) {
	cl := etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, _ := New(cl, "t4")
	good, err := s.Commit(ctx, addVIP("10.77.1.100:80/tcp"))
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan state.State, 100)
	refused := make(chan error, 100)
	go s.Watch(ctx, good.Revision, watched, func(err error) { refused <- err })
	key := s.prefix + vipsDir + "10.77.1.100:80/tcp"
	var putRev uint64
	put := func(value string) {
		t.Helper()
		r, err := cl.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		putRev = uint64(r.Header.Revision)
	}
	expectRefused := func(what, want string) {
		t.Helper()
	wait:
		for {
			select {
			case err := <-refused:
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("%s: refused with %v, want it to name %q", what, err, want)
				}
				t.Logf("%s: refused: %v", what, err)
				break wait
			case st := <-watched:
				if st.Revision >= putRev {
					t.Fatalf("%s: sent %+v", what, st)
				}
			case <-ctx.Done():
				t.Fatalf("%s: not refused", what)
			}
		}
		if _, err := s.Load(ctx); !errors.As(err, new(*InvalidError)) {
			t.Fatalf("%s: Load: %v, want an InvalidError", what, err)
		}
		if _, err := s.Commit(ctx, addVIP("10.77.1.101:80/tcp")); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: a change: %v, want it refused naming %q", what, err, want)
		}
	}
	put(`{"vip":"10.77.1.100:80/tcp","forward":"ipip","ring_size":4}`)
	expectRefused("ring_size 4", "ring_size 4")
	put(`not json`)
	expectRefused("a value that is not JSON", key)

	newer := `{"vip":"10.77.1.100:80/tcp","forward":"ipip","nat_pool":"10.9.0.0/24",` +
		`"backends":[{"addr":"10.77.2.1","weight":1,"nat_port":8080,"check":{"type":"tcp","ecn":true}}]}`
	put(newer)
	select {
	case st := <-watched:
		if len(st.VIPs) != 1 || len(st.VIPs[0].Backends) != 1 {
			t.Fatalf("the good value after the bad ones: %+v", st)
		}
	case err := <-refused:
		t.Fatalf("a VIP with a newer version's fields refused: %v", err)
	case <-ctx.Done():
		t.Fatal("the good value after the bad ones was not sent")
	}
	value := func() string {
		t.Helper()
		r, err := cl.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("get %s: %v", key, err)
		}
		return string(r.Kvs[0].Value)
	}
	if _, err := s.Commit(ctx, addVIP("10.77.1.101:80/tcp")); err != nil {
		t.Fatal(err)
	}
	if v := value(); v != newer {
		t.Fatalf("a change to another VIP rewrote this one:\n%s\nwas\n%s", v, newer)
	}
	if _, err := s.Commit(ctx, addBackend("10.77.1.100:80/tcp", "10.77.2.2")); err != nil {
		t.Fatal(err)
	}
	v := value()
	for _, want := range []string{`"nat_pool":"10.9.0.0/24"`, `"nat_port":8080`, `"ecn":true`, `"addr":"10.77.2.2"`} {
		if !strings.Contains(v, want) {
			t.Fatalf("after a change to the VIP, %s is gone:\n%s", want, v)
		}
	}
	t.Logf("a newer version's fields after a change to their VIP: %s", v)

	put(`{"vip":"10.77.1.100:80/tcp","forward":"ipip","ring_size":4}`)
	expectRefused("ring_size 4 again", "ring_size 4")
	restored, err := s.Replace(ctx, state.State{VIPs: []state.VIP{{VIP: "10.77.1.102:80/tcp", Forward: "ipip"}}})
	if err != nil {
		t.Fatalf("a restore over a refused state: %v", err)
	}
	if got, err := s.Load(ctx); err != nil || len(got.VIPs) != 1 || got.Revision != restored.Revision {
		t.Fatalf("after the restore: %+v, %v", got, err)
	}
}
