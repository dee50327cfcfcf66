# --- pbq job ${job_name}: run the command in its workspace, record its exit status ---
pbq_exit() {
    printf '%s\n' "$$1" > ${exit_tmp} && mv -f ${exit_tmp} ${exit_file}
    exit "$$1"
}
cd ${workspace} || { echo "pbq: cannot enter workspace "${workspace} >&2; pbq_exit 125; }
pbq_command=${command}
if /usr/bin/time -f '' -o /dev/null true 2>/dev/null; then
    /usr/bin/time -o ${usage_tmp} -f 'pbq-usage maxrss_kb=%M user_s=%U sys_s=%S elapsed_s=%e' \
        /bin/sh -c "$$pbq_command"
    pbq_rc=$$?
    mv -f ${usage_tmp} ${usage_file} 2>/dev/null
else
    /bin/sh -c "$$pbq_command"
    pbq_rc=$$?
fi
pbq_exit "$$pbq_rc"
