// Package etcdstore keeps a cluster's desired state in etcd: one key per
// VIP under /sluice/<cluster>/state/, written in transactions guarded by
// the revision they were computed from, the cluster's seed, and a watch
// that hands every node each state that is committed.
package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicelb/sluice/control/state"
)

// Layout of a cluster's keys under Prefix(cluster).
const (
	stateDir = "state/"
	vipsDir  = stateDir + "vips/" // one key a VIP, named by its ADDR:PORT/PROTO
	revKey   = stateDir + "rev"   // touched by every commit: the guard
	seedKey  = "seed"
)

// ErrConflict marks a change refused because another writer committed in
// between, more often than Commit retries.
var ErrConflict = errors.New("conflicting change")

// commitTries bounds how often Commit recomputes a change that lost a
// race; each try reads the newest state.
const commitTries = 16

// backoff waits a random time that grows with try before a change that
// lost a race is tried again, so that writers racing for the same key
// spread out instead of colliding again.
func backoff(ctx context.Context, try int) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(rand.Int64N(int64(try+1) * int64(2*time.Millisecond)))):
		return nil
	}
}

// Prefix is the root of a cluster's keys.
func Prefix(cluster string) string { return "/sluice/" + cluster + "/" }

// ValidCluster checks a cluster name: it becomes part of every key.
func ValidCluster(name string) error { return ValidName(name) }

// ValidName checks a name that becomes part of a key (a cluster's, a
// node's).
func ValidName(name string) error {
	if name == "" || len(name) > 64 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
		return fmt.Errorf("%q: 1 to 64 letters, digits, '-', '_' or '.'", name)
	}
	return nil
}

// Store is a cluster's desired state in etcd. Its methods block for at
// most their context.
type Store struct {
	cli    *clientv3.Client
	prefix string
}

// New uses cli for cluster's state; the caller owns cli.
func New(cli *clientv3.Client, cluster string) (*Store, error) {
	if err := ValidCluster(cluster); err != nil {
		return nil, fmt.Errorf("cluster name %w", err)
	}
	return &Store{cli: cli, prefix: Prefix(cluster)}, nil
}

// ErrNoQuorum: a member answers, but the cluster has no majority, so
// nothing can commit.
var ErrNoQuorum = errors.New("etcd answers, but without a quorum: a change needs a majority of its members")

// Ping reads as a commit needs etcd: a linearizable read, which takes a
// majority. When that fails but the member answers a read of its own, the
// error is ErrNoQuorum (a member cut off from the others still answers
// those); otherwise it is why etcd cannot be reached.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.cli.Get(ctx, s.prefix+seedKey, clientv3.WithCountOnly())
	if err == nil {
		return nil
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 300*time.Millisecond)
	defer cancel()
	if _, lerr := s.cli.Get(lctx, s.prefix+seedKey, clientv3.WithSerializable(), clientv3.WithCountOnly()); lerr == nil {
		return fmt.Errorf("%w (%v)", ErrNoQuorum, err)
	}
	return err
}

// Load reads the state as of the newest revision. A state that is not
// valid is an *InvalidError naming the key.
func (s *Store) Load(ctx context.Context) (state.State, error) {
	resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
	if err != nil {
		return state.State{}, fmt.Errorf("etcd: read state: %w", err)
	}
	snap := s.read(resp.Kvs)
	return snap.st, snap.err
}

// InvalidError is a state in etcd that this node refuses: a value that is
// not a VIP's JSON, or a state that does not validate (written around
// sluice, with etcdctl, or by a bug). It is never applied.
type InvalidError struct {
	Revision int64
	Key      string // the key at fault, when one is
	Err      error
}

func (e *InvalidError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("etcd state at revision %d: key %s: %v", e.Revision, e.Key, e.Err)
	}
	return fmt.Sprintf("etcd state at revision %d: %v", e.Revision, e.Err)
}

func (e *InvalidError) Unwrap() error { return e.Err }

// snapshot is the state under state/ as read: its VIPs' values as etcd
// holds them (to keep what a newer version wrote in them), the guard's
// mod revision (0 when nothing was ever committed), the newest mod
// revision of any of its keys, and the state itself, unless err says why
// it is refused.
type snapshot struct {
	st    state.State
	raw   map[string][]byte // VIP key name → value
	guard int64
	rev   int64
	err   error
}

// read builds a snapshot from the keys under state/.
func (s *Store) read(kvs []*mvccpb.KeyValue) snapshot {
	snap := snapshot{raw: map[string][]byte{}}
	for _, kv := range kvs {
		k := string(kv.Key)
		switch {
		case k == s.prefix+revKey:
			snap.guard = kv.ModRevision
		case strings.HasPrefix(k, s.prefix+vipsDir):
			snap.raw[strings.TrimPrefix(k, s.prefix+vipsDir)] = kv.Value
		default:
			continue
		}
		snap.rev = max(snap.rev, kv.ModRevision)
	}
	snap.st, snap.err = s.build(snap.raw, snap.rev)
	return snap
}

// build decodes and validates the VIPs' values as the state at etcd
// revision rev.
func (s *Store) build(raw map[string][]byte, rev int64) (state.State, error) {
	st := state.State{Revision: uint64(rev)}
	for name, value := range raw {
		v, err := state.DecodeVIP(value)
		if err != nil {
			return state.State{}, &InvalidError{Revision: rev, Key: s.prefix + vipsDir + name, Err: err}
		}
		if v.VIP != name {
			return state.State{}, &InvalidError{Revision: rev, Key: s.prefix + vipsDir + name, Err: fmt.Errorf("the value names vip %q", v.VIP)}
		}
		st.VIPs = append(st.VIPs, v)
	}
	check := st.Clone()
	check.Normalize()
	if err := check.Validate(); err != nil {
		return state.State{}, &InvalidError{Revision: rev, Err: err}
	}
	st.Normalize()
	st.Revision = uint64(rev)
	return st, nil
}

// Commit applies change to the newest state in one transaction, guarded
// by the revision it was computed from; when another writer won, the
// change is computed again on what that writer committed, so no update is
// lost. A change that leaves the state equal commits nothing.
func (s *Store) Commit(ctx context.Context, change func(*state.State) error) (state.State, error) {
	return s.CommitIf(ctx, nil, change)
}

// ErrFenced marks a commit refused because a comparison the caller
// guarded it with (a coordinator's election fence) no longer holds.
var ErrFenced = errors.New("fence no longer holds")

// CommitIf is Commit, in a transaction that also requires fence (for
// example that this node still holds the coordinator election): a change
// recorded with it cannot land once fence fails, however late it arrives.
func (s *Store) CommitIf(ctx context.Context, fence []clientv3.Cmp, change func(*state.State) error) (state.State, error) {
	return s.commit(ctx, fence, false, change)
}

// commit is CommitIf; whole (a restore) replaces the whole state, so it
// may replace one that is refused as invalid.
func (s *Store) commit(ctx context.Context, fence []clientv3.Cmp, whole bool, change func(*state.State) error) (state.State, error) {
	var lastGuard int64
	var pending *state.State // a commit whose outcome etcd did not tell
	for try := range commitTries {
		resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
		if err != nil {
			return state.State{}, fmt.Errorf("etcd: read state: %w", err)
		}
		snap := s.read(resp.Kvs)
		if snap.err != nil && !whole {
			return state.State{}, fmt.Errorf("%w; a change needs a valid state to start from: fix or delete that key (etcdctl put or del)", snap.err)
		}
		cur := snap.st
		if pending != nil && snap.err == nil && sameVIPs(cur, *pending) {
			return cur, nil // it did land: do not apply the change twice
		}
		next := cur.Clone()
		if err := change(&next); err != nil {
			return state.State{}, err
		}
		next.Normalize()
		if err := next.Validate(); err != nil {
			return state.State{}, err
		}
		next.Revision = cur.Revision
		if snap.err == nil && state.Equal(cur, next) {
			return cur, nil
		}
		rev, ok, err := s.put(ctx, snap, fence, next)
		if unknownOutcome(err) && ctx.Err() == nil {
			pending = &next // a leader change: read again to learn whether it landed
			continue
		}
		if err != nil {
			return state.State{}, err
		}
		if ok {
			next.Revision = uint64(rev)
			return next, nil
		}
		lastGuard = snap.guard
		if err := backoff(ctx, try); err != nil {
			return state.State{}, err
		}
	}
	return state.State{}, fmt.Errorf("%w: the state changed under this change %d times (last computed from revision %d); try again",
		ErrConflict, commitTries, lastGuard)
}

// Replace stores next as the whole state in one guarded transaction,
// whatever etcd held, a refused state included; the commit's revision
// becomes the state's.
func (s *Store) Replace(ctx context.Context, next state.State) (state.State, error) {
	return s.commit(ctx, nil, true, func(st *state.State) error {
		st.VIPs = next.Clone().VIPs
		return nil
	})
}

// put writes the VIPs of next whose value differs from what etcd holds
// (keeping in each the fields a newer version wrote, which this one does
// not know), deletes the keys of VIPs gone, and touches the guard, if the
// guard is still where snap read it and fence holds. It returns the
// transaction's revision and whether it committed; a fence that failed
// is ErrFenced.
func (s *Store) put(ctx context.Context, snap snapshot, fence []clientv3.Cmp, next state.State) (int64, bool, error) {
	old := make(map[string]bool, len(snap.raw))
	for name := range snap.raw {
		old[name] = true
	}
	cur := map[string]state.VIP{} // as read and normalised (none when refused)
	for _, v := range snap.st.VIPs {
		cur[v.VIP] = v
	}
	var ops []clientv3.Op
	for _, v := range next.VIPs {
		raw, err := json.Marshal(v)
		if err != nil {
			return 0, false, err
		}
		if prev, ok := snap.raw[v.VIP]; ok {
			delete(old, v.VIP)
			if was, ok := cur[v.VIP]; ok {
				if b, _ := json.Marshal(was); string(b) == string(raw) {
					continue // unchanged: its value, newer fields and all, stays
				}
			}
			if raw, err = state.KeepUnknown(prev, raw); err != nil {
				return 0, false, err
			}
		}
		ops = append(ops, clientv3.OpPut(s.prefix+vipsDir+v.VIP, string(raw)))
	}
	for name := range old {
		ops = append(ops, clientv3.OpDelete(s.prefix+vipsDir+name))
	}
	guard := snap.guard
	ops = append(ops, clientv3.OpPut(s.prefix+revKey, strconv.FormatInt(guard, 10)))
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.prefix+revKey), "=", guard)}, fence...)
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(s.prefix + revKey)).Commit()
	if err != nil {
		return 0, false, fmt.Errorf("etcd: commit state: %w", err)
	}
	if !resp.Succeeded && len(fence) > 0 {
		// Which comparison failed? The guard key tells: unchanged, it
		// was the fence.
		kvs := resp.Responses[0].GetResponseRange().Kvs
		var now int64
		if len(kvs) == 1 {
			now = kvs[0].ModRevision
		}
		if now == guard {
			return 0, false, ErrFenced
		}
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// unknownOutcome says whether a failed transaction may still have been
// committed: etcd answers these when the leader changed under it.
func unknownOutcome(err error) bool {
	for _, e := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrLeaderChanged,
		rpctypes.ErrTimeoutDueToConnectionLost} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// sameVIPs compares two states' VIPs, revisions aside.
func sameVIPs(a, b state.State) bool {
	a.Revision, b.Revision = 0, 0
	return state.Equal(a, b)
}

// EnsureSeed sets the cluster's seed when the cluster is new, and
// otherwise checks that seed is the one it was created with.
func (s *Store) EnsureSeed(ctx context.Context, seed uint64) error {
	want := strconv.FormatUint(seed, 10)
	k := s.prefix + seedKey
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, want)).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return fmt.Errorf("etcd: cluster seed: %w", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 && string(kvs[0].Value) != want {
		return fmt.Errorf("--seed %d: cluster %s was created with seed %s; every node of a cluster must use it", seed,
			strings.TrimSuffix(strings.TrimPrefix(s.prefix, "/sluice/"), "/"), kvs[0].Value)
	}
	return nil
}

// Watch sends out every state committed after revision from, until ctx
// ends, and gives refused every state it refuses instead (a value that is
// not a VIP's JSON, a state that does not validate: see InvalidError),
// once per revision. A refused state is never sent: a node goes on with
// the last good one, and takes the next good one when it comes. States
// written around sluice (etcdctl) are seen too.
func (s *Store) Watch(ctx context.Context, from uint64, out chan<- state.State, refused func(error)) {
	for ctx.Err() == nil {
		var err error
		if from, err = s.follow(ctx, from, out, refused); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond): // a retry pace while etcd is away
			}
		}
	}
}

// follow reads the state, then follows the watch of its keys, sending
// every good state newer than from; it returns when the watch ends.
func (s *Store) follow(ctx context.Context, from uint64, out chan<- state.State, refused func(error)) (uint64, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
	if err != nil {
		return from, err
	}
	snap := s.read(resp.Kvs)
	var lastRefused int64
	emit := func(st state.State, err error, rev int64) error {
		switch {
		case err != nil:
			if rev != lastRefused {
				lastRefused = rev
				refused(err)
			}
		case st.Revision > from:
			select {
			case out <- st:
			case <-ctx.Done():
				return ctx.Err()
			}
			from = st.Revision
		}
		return nil
	}
	if err := emit(snap.st, snap.err, snap.rev); err != nil {
		return from, err
	}
	raw := snap.raw
	wch := s.cli.Watch(wctx, s.prefix+stateDir, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return from, fmt.Errorf("etcd: watch state: %w", err)
		}
		if !s.applyEvents(raw, wr.Events) {
			continue
		}
		rev := wr.Events[len(wr.Events)-1].Kv.ModRevision
		st, err := s.build(raw, rev)
		if err := emit(st, err, rev); err != nil {
			return from, err
		}
	}
	return from, errors.New("etcd: watch state ended")
}

// applyEvents updates raw, the VIPs' values, with a watch response's
// events, and reports whether any was a commit's or touched a VIP.
func (s *Store) applyEvents(raw map[string][]byte, evs []*clientv3.Event) bool {
	changed := false
	for _, ev := range evs {
		k := string(ev.Kv.Key)
		switch {
		case k == s.prefix+revKey:
			changed = true
		case strings.HasPrefix(k, s.prefix+vipsDir):
			changed = true
			name := strings.TrimPrefix(k, s.prefix+vipsDir)
			if ev.Type == clientv3.EventTypeDelete {
				delete(raw, name)
			} else {
				raw[name] = ev.Kv.Value
			}
		}
	}
	return changed
}
