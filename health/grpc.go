package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// maxGRPCAnswer bounds what a backend's health answer may be: a
// HealthCheckResponse is a few bytes.
const maxGRPCAnswer = 4 << 10

// maxGRPCHeaders bounds the answer's headers and trailers, where a
// status message travels: gRPC's own bound is 16 MiB.
const maxGRPCHeaders = 16 << 10

// runGRPC asks the backend's grpc.health.v1 Health service about
// p.Service over a connection of its own: SERVING passes, any other
// status or error fails, named.
func (p Probe) runGRPC(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if p.TLS {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: !p.TLSVerify, ServerName: p.Host}) //nolint:gosec // operator's choice
	}
	var dialErr atomic.Pointer[error] // the connection's own failure, as the other checks name it
	cc, err := grpc.NewClient("passthrough:///"+p.Addr.String(),
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := p.dial(ctx, "tcp")
			if err != nil {
				dialErr.Store(&err)
			}
			return c, err
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxGRPCAnswer)),
		grpc.WithMaxHeaderListSize(maxGRPCHeaders))
	if err != nil {
		return fmt.Errorf("grpc: %w", err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: p.Service})
	if err != nil {
		if de := dialErr.Load(); de != nil {
			return *de
		}
		return grpcError(err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		if p.Service != "" {
			return fmt.Errorf("grpc health: service %q is %s", p.Service, st)
		}
		return fmt.Errorf("grpc health: %s", st)
	}
	return nil
}

// grpcError names a failed Check by its gRPC status; a deadline is the
// probe's timeout, as with the other checks.
func grpcError(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	if s.Code() == codes.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return fmt.Errorf("grpc %s: %s", s.Code(), CleanReason(s.Message()))
}
