// Package bpf holds sluice's XDP programs and the Go bindings bpf2go
// generates for them. The map layouts live in sluice.h; the Go types here are
// generated from it and are the only Go declaration of those layouts.
package bpf

// The include paths let <asm/types.h> resolve on Debian multiarch layouts;
// clang ignores the ones that do not exist.
//go:generate go tool bpf2go -go-package bpf -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" -type sluice_forward -type sluice_family -type sluice_backend_flags -type sluice_cfg -type vip_key -type vip_info -type vip_entry -type flow_key -type ring_chunk -type flow_event -type capture_rec -type capture_cfg -type sluice_capture_dir -type sluice_probe Lb lb.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -go-package bpf -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" -type decap_allow_key Decap decap.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -go-package bpf -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" Tools tools.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -go-package bpf -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" Floor floor.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
