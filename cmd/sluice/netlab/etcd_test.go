package netlab

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestEtcdCluster: StartEtcd runs a real three-member etcd cluster in the
// lab's namespaces. Writes go on with one member killed, and the member
// started again on its data directory catches up.
func TestEtcdCluster(t *testing.T) {
	testutil.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := New(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	c, err := env.StartEtcd(ctx, 3, netip.MustParseAddr("10.77.0.31"), 24)
	if err != nil {
		t.Fatal(err)
	}
	h, err := env.AddHost("cli", netip.MustParsePrefix("10.77.0.40/24"), HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.Client(h)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Put(ctx, "/sluicet/a", "1"); err != nil {
		t.Fatal(err)
	}
	m := c.Members[0]
	if err := m.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// A killed leader makes the first write wait out an election, and
	// etcd may answer it "request timed out" (its outcome unknown): a
	// client tries again, as sluice's store does.
	var put *clientv3.PutResponse
	for try := 0; ; try++ {
		if put, err = cl.Put(ctx, "/sluicet/b", "2"); err == nil {
			break
		}
		if try == 5 || !errors.Is(err, rpctypes.ErrTimeout) && !errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) && !errors.Is(err, rpctypes.ErrLeaderChanged) {
			t.Fatalf("write with one of three members killed: %v", err)
		}
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	// A serialisable read answers from the member's own copy.
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{m.Endpoint()}, DialTimeout: 2 * time.Second,
		DialOptions: h.GRPCDialer(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	r, err := one.Get(ctx, "/sluicet/b", clientv3.WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "2" || r.Kvs[0].ModRevision != put.Header.Revision {
		t.Fatalf("restarted member has %v, want b=2 at revision %d", r.Kvs, put.Header.Revision)
	}
}
