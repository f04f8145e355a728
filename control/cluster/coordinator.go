package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// holdMargin is how much of its lease a coordinator gives up: it holds
// the role for a hook only until two thirds of the TTL after it last
// sent a renewal that etcd answered (client-go's leader election keeps
// the same kind of margin, RenewDeadline < LeaseDuration). etcd extends
// the lease by the TTL when it receives the renewal, after it was sent,
// so the hook ends before another node can be elected.
func (m *Member) holdFor() time.Duration { return 2 * m.grantTimeout() / 3 }

// Hold is called right before a hook runs: it renews the lease and checks
// the election key in a fenced no-op transaction, and returns a context
// that ends, with the hook, when the role can no longer be vouched for
// (a renewal that etcd did not answer within the margin). Refused, it is
// ErrNotCoordinator with why.
func (m *Member) Hold(ctx context.Context) (context.Context, context.CancelFunc, error) {
	m.mu.Lock()
	e, s := m.elected, m.session
	m.mu.Unlock()
	if e == nil || s == nil {
		return nil, nil, ErrNotCoordinator
	}
	until, err := m.renew(ctx, e, s)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotCoordinator, err)
	}
	hctx, cancel := context.WithCancel(ctx)
	go m.keepHolding(hctx, cancel, e, s, until)
	return hctx, cancel, nil
}

// renew renews s's lease and checks, in a transaction fenced on the
// election key, that e still holds; it returns until when the role holds.
func (m *Member) renew(ctx context.Context, e *concurrency.Election, s *concurrency.Session) (time.Time, error) {
	rctx, cancel := context.WithTimeout(ctx, m.holdFor())
	defer cancel()
	sent := time.Now()
	if _, err := m.cli.KeepAliveOnce(rctx, s.Lease()); err != nil {
		return time.Time{}, fmt.Errorf("renew the lease: %w", err)
	}
	resp, err := m.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())).Commit()
	if err != nil {
		return time.Time{}, fmt.Errorf("check the election: %w", err)
	}
	if !resp.Succeeded {
		return time.Time{}, errors.New("the election key is gone: another node coordinates")
	}
	return sent.Add(m.holdFor()), nil
}

// keepHolding renews every third of the margin while ctx lasts, and
// cancels it when until passes without a renewal that extends it.
func (m *Member) keepHolding(ctx context.Context, cancel context.CancelFunc, e *concurrency.Election, s *concurrency.Session, until time.Time) {
	defer cancel()
	every := m.holdFor() / 3
	for {
		wait := min(every, time.Until(until))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if !time.Now().Before(until) {
			m.opts.Log.Warn("cluster: a hook was stopped: the coordinator's lease could not be renewed in time", "node", m.opts.Name, "held_until", until)
			return
		}
		if u, err := m.renew(ctx, e, s); err == nil {
			until = u
		}
	}
}
