package neigh

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// resolver answers after a delay, failing for addresses in fail.
type resolver struct {
	delay time.Duration
	fail  map[netip.Addr]bool
	calls atomic.Int32
}

func (r *resolver) Resolve(ctx context.Context, a netip.Addr) (net.HardwareAddr, error) {
	r.calls.Add(1)
	time.Sleep(r.delay)
	if r.fail[a] {
		return nil, errors.New("no neighbour entry")
	}
	return net.HardwareAddr{2, 0, 0, 0, 0, 1}, nil
}

// TestMACCacheNeverBlocks: get returns at once while a resolution runs
// (1 s here), reports when it finished, remembers a failure and retries it
// only after its backoff.
func TestMACCacheNeverBlocks(t *testing.T) {
	good, bad := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	r := &resolver{delay: time.Second, fail: map[netip.Addr]bool{bad: true}}
	done := make(chan struct{}, 4)
	c := NewCache(r, func() { done <- struct{}{} })
	ctx := context.Background()
	start := time.Now()
	for _, a := range []netip.Addr{good, bad} {
		if _, err := c.Get(ctx, a, ""); !errors.Is(err, ErrResolving) {
			t.Fatalf("%s: %v, want ErrResolving", a, err)
		}
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("get waited %v for the resolver", took)
	}
	<-done
	<-done
	if m, err := c.Get(ctx, good, ""); err != nil || m.String() != "02:00:00:00:00:01" {
		t.Fatalf("resolved: %v %v", m, err)
	}
	if _, err := c.Get(ctx, bad, ""); err == nil || !strings.Contains(err.Error(), "no neighbour entry") {
		t.Fatalf("failed: %v", err)
	}
	for range 100 {
		c.Get(ctx, bad, "")
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("%d resolutions, want 2: a failure is retried only after its backoff", n)
	}
	if m, err := c.Get(ctx, bad, "02:00:00:00:00:09"); err != nil || m.String() != "02:00:00:00:00:09" {
		t.Fatalf("a configured MAC: %v %v", m, err)
	}
}
