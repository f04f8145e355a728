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

// Load reads the state as of the newest revision.
func (s *Store) Load(ctx context.Context) (state.State, error) {
	resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
	if err != nil {
		return state.State{}, fmt.Errorf("etcd: read state: %w", err)
	}
	st, _, err := s.decode(resp.Kvs)
	if err != nil {
		return state.State{}, err
	}
	return st, nil
}

// decode builds a state from the keys under state/ and returns the guard
// key's mod revision with it (0 when nothing was ever committed).
func (s *Store) decode(kvs []*mvccpb.KeyValue) (state.State, int64, error) {
	var st state.State
	var guard int64
	for _, kv := range kvs {
		k := string(kv.Key)
		switch {
		case k == s.prefix+revKey:
			guard = kv.ModRevision
		case strings.HasPrefix(k, s.prefix+vipsDir):
			var v state.VIP
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				return state.State{}, 0, fmt.Errorf("etcd key %s: %w", k, err)
			}
			st.VIPs = append(st.VIPs, v)
		}
	}
	st.Revision = uint64(guard)
	check := st.Clone()
	check.Normalize()
	if err := check.Validate(); err != nil {
		return state.State{}, 0, fmt.Errorf("etcd state at revision %d: %w", guard, err)
	}
	st.Normalize()
	st.Revision = uint64(guard)
	return st, guard, nil
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
	var lastGuard int64
	var pending *state.State // a commit whose outcome etcd did not tell
	for try := range commitTries {
		resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
		if err != nil {
			return state.State{}, fmt.Errorf("etcd: read state: %w", err)
		}
		cur, guard, err := s.decode(resp.Kvs)
		if err != nil {
			return state.State{}, err
		}
		if pending != nil && sameVIPs(cur, *pending) {
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
		if state.Equal(cur, next) {
			return cur, nil
		}
		rev, ok, err := s.put(ctx, guard, fence, cur, next)
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
		lastGuard = guard
		if err := backoff(ctx, try); err != nil {
			return state.State{}, err
		}
	}
	return state.State{}, fmt.Errorf("%w: the state changed under this change %d times (last computed from revision %d); try again",
		ErrConflict, commitTries, lastGuard)
}

// Replace stores next as the whole state in one guarded transaction (a
// backup's restore); the commit's revision becomes the state's.
func (s *Store) Replace(ctx context.Context, next state.State) (state.State, error) {
	return s.Commit(ctx, func(st *state.State) error {
		st.VIPs = next.Clone().VIPs
		return nil
	})
}

// put writes the VIPs that differ between cur and next, deletes those
// gone, and touches the guard, if the guard is still at guard and fence
// holds. It returns the transaction's revision and whether it committed;
// a fence that failed is ErrFenced.
func (s *Store) put(ctx context.Context, guard int64, fence []clientv3.Cmp, cur, next state.State) (int64, bool, error) {
	old := map[string]state.VIP{}
	for _, v := range cur.VIPs {
		old[v.VIP] = v
	}
	var ops []clientv3.Op
	for _, v := range next.VIPs {
		raw, err := json.Marshal(v)
		if err != nil {
			return 0, false, err
		}
		if o, ok := old[v.VIP]; ok {
			delete(old, v.VIP)
			if prev, _ := json.Marshal(o); string(prev) == string(raw) {
				continue
			}
		}
		ops = append(ops, clientv3.OpPut(s.prefix+vipsDir+v.VIP, string(raw)))
	}
	for k := range old {
		ops = append(ops, clientv3.OpDelete(s.prefix+vipsDir+k))
	}
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

// Watch sends every state committed after revision from, in order, until
// ctx ends. A watch that breaks (etcd unreachable, a compacted revision)
// starts again from a fresh read, so the newest state always arrives.
func (s *Store) Watch(ctx context.Context, from uint64, out chan<- state.State) {
	for ctx.Err() == nil {
		var err error
		if from, err = s.follow(ctx, from, out); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond): // a retry pace while etcd is away
			}
		}
	}
}

// follow watches from revision from+1 and returns the newest revision it
// passed on when the watch ends.
func (s *Store) follow(ctx context.Context, from uint64, out chan<- state.State) (uint64, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+stateDir, clientv3.WithPrefix())
	if err != nil {
		return from, err
	}
	cur, guard, err := s.decode(resp.Kvs)
	if err != nil {
		return from, err
	}
	if uint64(guard) > from {
		select {
		case out <- cur:
		case <-ctx.Done():
			return from, ctx.Err()
		}
		from = uint64(guard)
	}
	vips := map[string]state.VIP{}
	for _, v := range cur.VIPs {
		vips[v.VIP] = v
	}
	wch := s.cli.Watch(wctx, s.prefix+stateDir, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return from, fmt.Errorf("etcd: watch state: %w", err)
		}
		rev, err := s.applyEvents(vips, wr.Events)
		if err != nil {
			return from, err
		}
		if rev == 0 {
			continue
		}
		st := state.State{Revision: uint64(rev)}
		for _, v := range vips {
			st.VIPs = append(st.VIPs, v)
		}
		st.Normalize()
		select {
		case out <- st:
		case <-ctx.Done():
			return from, ctx.Err()
		}
		from = uint64(rev)
	}
	return from, errors.New("etcd: watch state ended")
}

// applyEvents folds a watch response into vips and returns the revision
// of its last commit (a guard write), 0 when it held none.
func (s *Store) applyEvents(vips map[string]state.VIP, evs []*clientv3.Event) (int64, error) {
	var rev int64
	for _, ev := range evs {
		k := string(ev.Kv.Key)
		switch {
		case k == s.prefix+revKey:
			rev = ev.Kv.ModRevision
		case strings.HasPrefix(k, s.prefix+vipsDir):
			name := strings.TrimPrefix(k, s.prefix+vipsDir)
			if ev.Type == clientv3.EventTypeDelete {
				delete(vips, name)
				continue
			}
			var v state.VIP
			if err := json.Unmarshal(ev.Kv.Value, &v); err != nil {
				return 0, fmt.Errorf("etcd key %s: %w", k, err)
			}
			vips[name] = v
		}
	}
	return rev, nil
}
