# Shell helpers for the installers (sourced, not run): reading the env file npud's units use.

# The value an env file gives KEY (its last assignment, quotes removed), empty if none. Like
# systemd's EnvironmentFile= (and npud/envfile.py), whitespace around the name and the value is dropped.
env_value() {
    [ -r "$1" ] || return 0
    sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" "$1" | tail -n 1 \
        | sed "s/[[:space:]]*\$//; s/^[\"']//; s/[\"']\$//"
}

# Whether a value is one npud reads as "on" (npud/config.py _parse_bool).
is_true() { case "${1,,}" in 1|true|yes|on) return 0 ;; *) return 1 ;; esac; }

# Whether npud-http.socket is enabled in the unit directory $1 (the link systemctl enable leaves;
# it may point to a path that only exists on the installed system, hence -L as well as -e).
http_socket_enabled() {
    [ -L "$1/sockets.target.wants/npud-http.socket" ] || [ -e "$1/sockets.target.wants/npud-http.socket" ]
}
