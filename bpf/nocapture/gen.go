// Package nocapture is xdp_lb built without packet capture
// (-DSLUICE_NO_CAPTURE): make bench runs it beside the real build to show
// what capture's branch costs when capture is off. Only benchmarks import
// it.
package nocapture

//go:generate go tool bpf2go -go-package nocapture -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3 -DSLUICE_NO_CAPTURE" Lb ../lb.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
