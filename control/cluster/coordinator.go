package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrNotCoordinator refuses a fenced write from a node that does not hold
// the coordinator election (any more).
var ErrNotCoordinator = errors.New("this node is not the cluster's coordinator")

func (m *Member) electionPrefix() string { return m.prefix + "coordinator/" }

// Campaign runs for coordinator until ctx ends: on each session it waits
// to be elected, then holds the role until the session ends (etcd lost
// for longer than the TTL, or the lease revoked).
func (m *Member) Campaign(ctx context.Context) {
	for ctx.Err() == nil {
		s := m.Session()
		if s == nil {
			m.wait(ctx)
			continue
		}
		e := concurrency.NewElection(s, m.electionPrefix())
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-s.Done():
			case <-cctx.Done():
			}
			cancel()
		}()
		if err := e.Campaign(cctx, m.opts.Name); err != nil {
			cancel()
			m.wait(ctx)
			continue
		}
		m.mu.Lock()
		m.elected = e
		m.mu.Unlock()
		m.opts.Log.Info("cluster: this node is the coordinator", "node", m.opts.Name, "key", e.Key())
		if m.opts.OnCoordinator != nil {
			m.opts.OnCoordinator(true)
		}
		<-cctx.Done()
		m.mu.Lock()
		m.elected = nil
		m.mu.Unlock()
		if m.opts.OnCoordinator != nil {
			m.opts.OnCoordinator(false)
		}
		if ctx.Err() != nil {
			rctx, rcancel := context.WithTimeout(context.Background(), m.grantTimeout())
			e.Resign(rctx) // hand over at once on a clean stop
			rcancel()
		}
		cancel()
	}
}

// IsCoordinator reports whether this node holds the election, as far as
// it knows: Fenced is the check that counts.
func (m *Member) IsCoordinator() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.elected != nil
}

// Coordinator names the elected node ("" when there is none).
func (m *Member) Coordinator(ctx context.Context) (string, error) {
	resp, err := m.cli.Get(ctx, m.electionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("etcd: read coordinator: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Fence is the comparison that holds while this node is the elected
// coordinator: its election key still exists at the revision it was
// created with. A write guarded by it cannot land after another node was
// elected, however late it arrives.
func (m *Member) Fence() (clientv3.Cmp, error) {
	m.mu.Lock()
	e := m.elected
	m.mu.Unlock()
	if e == nil {
		return clientv3.Cmp{}, ErrNotCoordinator
	}
	return clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()), nil
}
