// Package cluster is one node's membership of a sluice cluster in etcd:
// its lease-bound node key (applied revision, ring digests, health view),
// the other nodes' keys as they change, the cluster's health verdict
// under a quorum rule, and the coordinator election with its fenced
// promotion epoch.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/etcdstore"
)

// Report is what a node publishes under its node key: the node as
// `cluster status` shows it (its applied revision, kernel ring digests,
// and its own health view, VIP → backend → "up" | "down" | "undecided").
type Report = api.ClusterNode

// Quorum says how the nodes' health views make the cluster's verdict.
type Quorum string

// Quorum rules.
const (
	Majority Quorum = "majority" // up when more than half of the live nodes that decided see it up
	Any      Quorum = "any"      // up when one live node sees it up
	Local    Quorum = "local"    // each node uses its own view
)

// ParseQuorum reads a --health-quorum value.
func ParseQuorum(s string) (Quorum, error) {
	switch q := Quorum(s); q {
	case Majority, Any, Local:
		return q, nil
	}
	return "", fmt.Errorf("%q: want majority, any or local", s)
}

// Votes a node publishes on a backend: a node whose check has not
// reached its first verdict yet (it just started, or the backend is new
// to it) publishes Undecided, and so does a node without a view of the
// backend.
const (
	VoteUp        = "up"
	VoteDown      = "down"
	VoteUndecided = "undecided"
)

// Up is the cluster's verdict on backend of vip among nodes. Only the
// nodes that decided vote: a node that joins or restarts cannot take a
// backend out of the others' rings before its own checks have run, and
// with no decided vote at all a backend is not up.
func (q Quorum) Up(nodes []Report, vip, backend string) bool {
	up, decided := 0, 0
	for _, n := range nodes {
		switch n.Health[vip][backend] {
		case VoteUp:
			up++
			decided++
		case VoteDown:
			decided++
		}
	}
	if q == Any {
		return up > 0
	}
	return 2*up > decided
}

// Options configure a member.
type Options struct {
	Cluster string
	Name    string
	// TTL is the node key's lease, in seconds (a coordinator cut off from
	// etcd stops within it).
	TTL int
	Log *slog.Logger
	// OnNodes is called, without locks held, each time another node's
	// key changed (and after this node's session was renewed).
	OnNodes func()
	// OnCoordinator is called when this node wins (true) or loses the
	// coordinator election.
	OnCoordinator func(bool)
}

// Member keeps this node's key alive and watches the others'.
type Member struct {
	cli    *clientv3.Client
	opts   Options
	prefix string

	mu      sync.Mutex
	session *concurrency.Session
	report  *Report // the last published (nil before the first)
	nodes   map[string]Report
	loaded  bool                  // nodes was read from etcd at least once
	elected *concurrency.Election // while this node is the coordinator
}

// NodesPrefix is where the node keys live.
func NodesPrefix(cluster string) string { return etcdstore.Prefix(cluster) + "nodes/" }

// New makes a member; Run keeps it in the cluster.
func New(cli *clientv3.Client, opts Options) (*Member, error) {
	if opts.Name == "" || strings.ContainsAny(opts.Name, "/ \t\n") || len(opts.Name) > 64 {
		return nil, fmt.Errorf("--node-name %q: 1 to 64 bytes, no '/' or spaces", opts.Name)
	}
	if opts.TTL < 1 {
		opts.TTL = 3
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Member{cli: cli, opts: opts, prefix: etcdstore.Prefix(opts.Cluster), nodes: map[string]Report{}}, nil
}

func (m *Member) key() string { return NodesPrefix(m.opts.Cluster) + m.opts.Name }

// Run keeps a session (lease) with etcd, republishes the node key on
// every new one, and watches the node keys, until ctx ends; then it
// revokes the lease, so the node leaves at once.
func (m *Member) Run(ctx context.Context) {
	defer m.Leave()
	for ctx.Err() == nil {
		s, err := m.newSession(ctx)
		if err != nil {
			m.wait(ctx)
			continue
		}
		m.mu.Lock()
		m.session = s
		r := m.report
		m.mu.Unlock()
		if r != nil {
			if err := m.put(ctx, s, *r); err != nil {
				m.opts.Log.Warn("cluster: publish node key", "err", err)
			}
		}
		m.watchNodes(ctx, s)
		m.mu.Lock()
		if m.session == s {
			m.session = nil // expired: etcd was away longer than the TTL
		}
		m.mu.Unlock()
	}
}

func (m *Member) grantTimeout() time.Duration { return time.Duration(m.opts.TTL) * time.Second }

// newSession grants a lease (bounded by the TTL, so that a lost etcd
// does not block) and keeps it alive until ctx ends.
func (m *Member) newSession(ctx context.Context) (*concurrency.Session, error) {
	gctx, cancel := context.WithTimeout(ctx, m.grantTimeout())
	defer cancel()
	lease, err := m.cli.Grant(gctx, int64(m.opts.TTL))
	if err != nil {
		return nil, fmt.Errorf("etcd: grant lease: %w", err)
	}
	return concurrency.NewSession(m.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(m.opts.TTL), concurrency.WithContext(ctx))
}

func (m *Member) wait(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(200 * time.Millisecond): // a retry pace while etcd is away
	}
}

// Leave revokes this node's lease: its key, and its candidacy, go at once.
func (m *Member) Leave() {
	m.mu.Lock()
	s := m.session
	m.session = nil
	m.mu.Unlock()
	if s != nil {
		s.Orphan()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m.cli.Revoke(ctx, s.Lease()) // the node key goes at once; else it expires with the TTL
		cancel()
	}
}

// watchNodes keeps m.nodes current until the session ends.
func (m *Member) watchNodes(ctx context.Context, s *concurrency.Session) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wctx.Err() == nil {
		select {
		case <-s.Done():
			return
		default:
		}
		resp, err := m.cli.Get(wctx, NodesPrefix(m.opts.Cluster), clientv3.WithPrefix())
		if err != nil {
			m.wait(wctx)
			continue
		}
		nodes := map[string]Report{}
		for _, kv := range resp.Kvs {
			if r, err := m.decode(kv.Key, kv.Value); err == nil {
				nodes[r.Name] = r
			}
		}
		m.setNodes(nodes)
		wch := m.cli.Watch(wctx, NodesPrefix(m.opts.Cluster), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		m.follow(s, wch, nodes)
	}
}

// follow applies node-key events until the watch or the session ends.
func (m *Member) follow(s *concurrency.Session, wch clientv3.WatchChan, nodes map[string]Report) {
	for {
		select {
		case <-s.Done():
			return
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return
			}
			for _, ev := range wr.Events {
				name := strings.TrimPrefix(string(ev.Kv.Key), NodesPrefix(m.opts.Cluster))
				if ev.Type == clientv3.EventTypeDelete {
					delete(nodes, name)
					continue
				}
				r, err := m.decode(ev.Kv.Key, ev.Kv.Value)
				if err != nil {
					delete(nodes, name)
					continue
				}
				nodes[name] = r
			}
			m.setNodes(nodes)
		}
	}
}

// MaxReport bounds a node key's value: a node's report names its
// health view of every backend (4 096 of them take about 300 KiB).
const MaxReport = 1 << 20

// decode reads a node key, refusing (and logging) one that is not a
// node's report: a name that is not a node name, a value over MaxReport
// or not JSON, or a report that names another node than its key.
func (m *Member) decode(key, value []byte) (Report, error) {
	r, err := DecodeReport(NodesPrefix(m.opts.Cluster), key, value)
	if err != nil && m.opts.Log != nil {
		m.opts.Log.Warn("cluster: node key refused", "key", string(key), "err", err)
	}
	return r, err
}

// DecodeReport reads the node key key (under prefix) with value.
func DecodeReport(prefix string, key, value []byte) (Report, error) {
	name, ok := strings.CutPrefix(string(key), prefix)
	if !ok {
		return Report{}, fmt.Errorf("key %q: not under %s", key, prefix)
	}
	if err := etcdstore.ValidName(name); err != nil {
		return Report{}, fmt.Errorf("node key: name %w", err)
	}
	if len(value) > MaxReport {
		return Report{}, fmt.Errorf("node %s: report of %d bytes, at most %d", name, len(value), MaxReport)
	}
	var r Report
	if err := json.Unmarshal(value, &r); err != nil {
		return Report{}, fmt.Errorf("node %s: %w", name, err)
	}
	if r.Name != name {
		return Report{}, fmt.Errorf("node %s: the report names node %q", name, r.Name)
	}
	return r, nil
}

func (m *Member) setNodes(nodes map[string]Report) {
	m.mu.Lock()
	changed := !equalNodes(m.nodes, nodes)
	m.loaded = true
	m.nodes = make(map[string]Report, len(nodes))
	for k, v := range nodes {
		m.nodes[k] = v
	}
	m.mu.Unlock()
	if changed && m.opts.OnNodes != nil {
		m.opts.OnNodes()
	}
}

func equalNodes(a, b map[string]Report) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok {
			return false
		}
		ja, _ := json.Marshal(v.Health)
		jb, _ := json.Marshal(w.Health)
		if string(ja) != string(jb) {
			return false
		}
	}
	return true
}

// ErrNoSession marks a publish while this node holds no lease (etcd is
// unreachable); the report goes out when the session is back.
var ErrNoSession = errors.New("no etcd session")

// Publish stores r under this node's key (with its lease). The newest
// report is kept and published again on every new session.
func (m *Member) Publish(ctx context.Context, r Report) error {
	r.Name = m.opts.Name
	m.mu.Lock()
	m.report = &r
	s := m.session
	m.mu.Unlock()
	if s == nil {
		return ErrNoSession
	}
	return m.put(ctx, s, r)
}

func (m *Member) put(ctx context.Context, s *concurrency.Session, r Report) error {
	r.LastSeen = time.Now().UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano)
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := m.cli.Put(ctx, m.key(), string(raw), clientv3.WithLease(s.Lease())); err != nil {
		return fmt.Errorf("etcd: publish node key %s: %w", m.key(), err)
	}
	return nil
}

// Nodes are the live nodes' reports, sorted by name.
func (m *Member) Nodes() []Report {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Report, 0, len(m.nodes))
	for _, r := range m.nodes {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Report) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Loaded reports whether the node list was read from etcd at least once.
func (m *Member) Loaded() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.loaded
}

// Session is the current session, nil while etcd is away.
func (m *Member) Session() *concurrency.Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.session
}
