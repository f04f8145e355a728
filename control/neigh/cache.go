package neigh

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

// ErrResolving is a backend's MAC error while its first resolution runs.
var ErrResolving = errors.New("resolving the next-hop MAC")

// MACResolver finds the next-hop MAC for a backend; NetlinkResolver is the
// real one.
type MACResolver interface {
	Resolve(ctx context.Context, addr netip.Addr) (net.HardwareAddr, error)
}

// Cache holds backends' next-hop MACs. A MAC not known yet is resolved
// on a goroutine of its own, never on the caller's: an apply, which holds
// the daemon's lock, must not wait for a neighbour that does not answer.
// A failure is remembered, and retried with backoff.
type Cache struct {
	resolver MACResolver
	resolved func() // after each resolution; may be nil

	mu      sync.Mutex
	entries map[netip.Addr]*entry
}

type entry struct {
	mac     net.HardwareAddr
	err     error     // the last resolution's failure
	retry   time.Time // not before, after a failure
	backoff time.Duration
	busy    bool // a resolution runs
}

// NewCache is a cache resolving through r; resolved (may be nil) is
// called, with no lock held, after each resolution finished.
func NewCache(r MACResolver, resolved func()) *Cache {
	return &Cache{resolver: r, resolved: resolved, entries: map[netip.Addr]*entry{}}
}

// Adopt records a MAC the data plane already holds (a zero one is not).
func (c *Cache) Adopt(addr netip.Addr, mac net.HardwareAddr) {
	if isZeroMAC(mac) {
		return
	}
	c.mu.Lock()
	c.entries[addr] = &entry{mac: mac}
	c.mu.Unlock()
}

// Get returns the configured MAC, or the resolved one. Without one it
// starts a resolution (unless one runs, or a failure's backoff has not
// passed) and returns why there is none: ErrResolving, or the failure.
func (c *Cache) Get(ctx context.Context, addr netip.Addr, configured string) (net.HardwareAddr, error) {
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
		e = &entry{}
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
	return nil, fmt.Errorf("%w of %s", ErrResolving, addr)
}

func (c *Cache) resolve(ctx context.Context, addr netip.Addr) {
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

// Refresh re-resolves every resolved MAC and reports whether any changed.
func (c *Cache) Refresh(ctx context.Context) bool {
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
