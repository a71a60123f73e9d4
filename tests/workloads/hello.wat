;; A WASI preview 1 program: prints a known line, then its first argument and the GREETING
;; environment variable, each on a line of its own:
;;   hello from kwasm-agent's test workload
;;   arg: <argv[1]>
;;   env: GREETING=<value>
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; 0..8: the iovec fd_write reads; 16..32: sizes; 1024..: text; 4096..: argv; 32768..: environ.
  (data (i32.const 1024) "hello from kwasm-agent's test workload\n")
  (data (i32.const 1100) "arg: ")
  (data (i32.const 1110) "env: ")
  (data (i32.const 1120) "\n")
  (data (i32.const 1130) "GREETING=")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $end
      (loop $next
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func $has_prefix (param $s i32) (param $prefix i32) (param $len i32) (result i32)
    (local $i i32)
    (loop $next
      (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
      (if (i32.ne (i32.load8_u (i32.add (local.get $s) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $prefix) (local.get $i))))
        (then (return (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))
    (i32.const 0))

  ;; "<label: 5 bytes><NUL-terminated string>\n"
  (func $line (param $label i32) (param $s i32)
    (call $write (local.get $label) (i32.const 5))
    (call $write (local.get $s) (call $strlen (local.get $s)))
    (call $write (i32.const 1120) (i32.const 1)))

  (func (export "_start")
    (local $i i32) (local $count i32) (local $var i32)
    (call $write (i32.const 1024) (i32.const 39))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 4096) (i32.const 8192)))
    (if (i32.ge_u (i32.load (i32.const 16)) (i32.const 2))
      (then (call $line (i32.const 1100) (i32.load (i32.const 4100)))))
    (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
    (drop (call $environ_get (i32.const 32768) (i32.const 40960)))
    (local.set $count (i32.load (i32.const 24)))
    (block $end
      (loop $next
        (br_if $end (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $var (i32.load (i32.add (i32.const 32768) (i32.mul (local.get $i) (i32.const 4)))))
        (if (call $has_prefix (local.get $var) (i32.const 1130) (i32.const 9))
          (then (call $line (i32.const 1110) (local.get $var))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
)
