// A TLS byte relay in Go's standard library, for `bench/tunnel.py --peer --floor`: what two
// compiled processes cost that do nothing but decrypt and re-encrypt every byte (Go's
// crypto/tls, assembly AES-GCM, io.Copy), the floor any two-process tunnel stands on.
//
//	go_relay LISTEN_PORT UPSTREAM_PORT CERT KEY [CLIENT_CERT CLIENT_KEY]
//
// Accepts TLS on 127.0.0.1:LISTEN_PORT with CERT/KEY and, for each connection, opens TLS to
// 127.0.0.1:UPSTREAM_PORT (presenting CLIENT_CERT when given, verifying nothing: a benchmark's
// loopback hop) and copies bytes both ways. Prints "ready" once listening.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	args := os.Args[1:]
	if len(args) != 4 && len(args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: go_relay LISTEN_PORT UPSTREAM_PORT CERT KEY [CLIENT_CERT CLIENT_KEY]")
		os.Exit(2)
	}
	server, err := tls.LoadX509KeyPair(args[2], args[3])
	if err != nil {
		fail(err)
	}
	upstream := &tls.Config{InsecureSkipVerify: true}
	if len(args) == 6 {
		client, err := tls.LoadX509KeyPair(args[4], args[5])
		if err != nil {
			fail(err)
		}
		upstream.Certificates = []tls.Certificate{client}
	}
	listener, err := tls.Listen("tcp", "127.0.0.1:"+args[0],
		&tls.Config{Certificates: []tls.Certificate{server}})
	if err != nil {
		fail(err)
	}
	fmt.Println("ready")
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail(err)
		}
		go relay(conn, "127.0.0.1:"+args[1], upstream)
	}
}

func relay(conn net.Conn, address string, config *tls.Config) {
	defer conn.Close()
	upstream, err := tls.Dial("tcp", address, config)
	if err != nil {
		return
	}
	defer upstream.Close()
	go func() {
		_, _ = io.Copy(upstream, conn)
		upstream.Close()
	}()
	_, _ = io.Copy(conn, upstream)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
