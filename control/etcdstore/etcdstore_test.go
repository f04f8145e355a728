package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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
	go s.Watch(wctx, 0, watched)

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
