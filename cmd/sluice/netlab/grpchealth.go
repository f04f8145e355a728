package netlab

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// LabGRPCPort is where a lab backend serves gRPC health.
const LabGRPCPort = 50051

// GRPCHealth is a real gRPC server (grpc-go) serving the standard
// grpc.health.v1 Health service on one of a lab's hosts, as a
// model-serving replica does; the test or lab sets each service's status.
type GRPCHealth struct {
	srv *grpc.Server
	hs  *health.Server
}

// StartGRPCHealth serves gRPC health on h's port, every service (and the
// server as a whole, "") SERVING until told otherwise.
func StartGRPCHealth(h *Host, port uint16) (*GRPCHealth, error) {
	l, err := h.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("grpc health on %s: %w", h.Name, err)
	}
	g := &GRPCHealth{srv: grpc.NewServer(), hs: health.NewServer()}
	healthpb.RegisterHealthServer(g.srv, g.hs)
	go g.srv.Serve(l)
	return g, nil
}

// Set makes service SERVING or NOT_SERVING.
func (g *GRPCHealth) Set(service string, serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	g.hs.SetServingStatus(service, st)
}

// Stop stops the server.
func (g *GRPCHealth) Stop() { g.srv.Stop() }
