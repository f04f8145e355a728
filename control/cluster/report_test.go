package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDecodeReport: a node key is taken only when it is a node's report:
// its name a node name, its value bounded JSON naming the same node.
// Before, the initial read keyed reports by the name in the value, so a
// key could speak for another node.
func TestDecodeReport(t *testing.T) {
	const prefix = "/sluice/c1/nodes/"
	for _, c := range []struct {
		key, value, want string // want: part of the error, "" takes it
	}{
		{prefix + "lb1", `{"name":"lb1","addr":"10.0.0.1"}`, ""},
		{prefix + "lb1", `{"name":"lb2","addr":"10.0.0.1"}`, `node lb1: the report names node "lb2"`},
		{prefix + "lb1", `{"addr":"10.0.0.1"}`, `the report names node ""`},
		{prefix + "lb/1", `{"name":"lb/1"}`, "node key: name \"lb/1\": 1 to 64 letters"},
		{prefix + strings.Repeat("n", 65), `{}`, "1 to 64 letters"},
		{prefix, `{}`, "1 to 64 letters"},
		{prefix + "lb1", `not json`, "node lb1: invalid character"},
		{prefix + "lb1", `{"name":"lb1","addr":"` + strings.Repeat("x", MaxReport) + `"}`, "at most 1048576"},
		{"/sluice/c2/nodes/lb1", `{"name":"lb1"}`, "not under /sluice/c1/nodes/"},
	} {
		r, err := DecodeReport(prefix, []byte(c.key), []byte(c.value))
		switch {
		case c.want == "" && (err != nil || r.Name != strings.TrimPrefix(c.key, prefix)):
			t.Errorf("%.60s = %.60s: %+v, %v", c.key, c.value, r, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%.60s = %.60s: %v, want an error with %q", c.key, c.value, err, c.want)
		}
	}
}

// TestIsUnavailable: etcd not answering in time, as the client sees it
// and as a member without a quorum answers it, is unavailability; a
// refusal is not.
func TestIsUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("etcd: read state: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("etcd: read state: %w", status.Error(codes.Unknown, "context deadline exceeded")), true},
		{fmt.Errorf("etcd: commit state: %w", status.Error(codes.Unavailable, "no leader")), true},
		{status.Error(codes.Unknown, "etcdserver: too many operations in txn request"), false},
		{errors.New("vip 10.0.0.1:80/tcp: no such vip"), false},
	} {
		if got := isUnavailable(c.err); got != c.want {
			t.Errorf("%v: %v, want %v", c.err, got, c.want)
		}
	}
}
