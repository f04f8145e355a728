package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Backoff of a next-hop MAC that could not be resolved: the first retry
// after macRetryMin, doubling to macRetryMax.
const (
	macRetryMin = time.Second
	macRetryMax = 30 * time.Second
)

// errResolving is a backend's MAC error while its first resolution runs.
var errResolving = errors.New("resolving the next-hop MAC")

// macCache holds backends' next-hop MACs. A MAC not known yet is resolved
// on a goroutine of its own, never on the caller's: an apply, which holds
// the daemon's lock, must not wait for a neighbour that does not answer.
// A failure is remembered, and retried with backoff.
type macCache struct {
	resolver MACResolver
	resolved func() // after each resolution; may be nil

	mu      sync.Mutex
	entries map[netip.Addr]*macEntry
}

type macEntry struct {
	mac     net.HardwareAddr
	err     error     // the last resolution's failure
	retry   time.Time // not before, after a failure
	backoff time.Duration
	busy    bool // a resolution runs
}

func newMACCache(r MACResolver, resolved func()) *macCache {
	return &macCache{resolver: r, resolved: resolved, entries: map[netip.Addr]*macEntry{}}
}

// adopt records a MAC the data plane already holds (a zero one is not).
func (c *macCache) adopt(addr netip.Addr, mac net.HardwareAddr) {
	if isZeroMAC(mac) {
		return
	}
	c.mu.Lock()
	c.entries[addr] = &macEntry{mac: mac}
	c.mu.Unlock()
}

// get returns the configured MAC, or the resolved one. Without one it
// starts a resolution (unless one runs, or a failure's backoff has not
// passed) and returns why there is none: errResolving, or the failure.
func (c *macCache) get(ctx context.Context, addr netip.Addr, configured string) (net.HardwareAddr, error) {
	if configured != "" {
		return net.ParseMAC(configured)
	}
	if c.resolver == nil {
		return nil, fmt.Errorf("backend %s: no mac and no resolver", addr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[addr]
	if e == nil {
		e = &macEntry{}
		c.entries[addr] = e
	}
	if e.mac != nil {
		return e.mac, nil
	}
	if !e.busy && !time.Now().Before(e.retry) {
		e.busy = true
		go c.resolve(ctx, addr)
	}
	if e.err != nil {
		return nil, e.err
	}
	return nil, fmt.Errorf("%w of %s", errResolving, addr)
}

func (c *macCache) resolve(ctx context.Context, addr netip.Addr) {
	mac, err := c.resolver.Resolve(ctx, addr)
	c.mu.Lock()
	e := c.entries[addr]
	e.busy = false
	if err != nil {
		e.err = err
		e.backoff = min(max(2*e.backoff, macRetryMin), macRetryMax)
		e.retry = time.Now().Add(e.backoff)
	} else {
		e.mac, e.err, e.backoff = mac, nil, 0
	}
	c.mu.Unlock()
	if c.resolved != nil && ctx.Err() == nil {
		c.resolved()
	}
}

// refresh re-resolves every resolved MAC and reports whether any changed.
func (c *macCache) refresh(ctx context.Context) bool {
	if c.resolver == nil {
		return false
	}
	c.mu.Lock()
	var addrs []netip.Addr
	for a, e := range c.entries {
		if e.mac != nil {
			addrs = append(addrs, a)
		}
	}
	c.mu.Unlock()
	changed := false
	for _, a := range addrs {
		m, err := c.resolver.Resolve(ctx, a)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if e := c.entries[a]; e != nil && e.mac.String() != m.String() {
			e.mac = m
			changed = true
		}
		c.mu.Unlock()
	}
	return changed
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}
